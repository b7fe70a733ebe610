"""The framework-neutral graph that every pass works on.

A :class:`Graph` is a list of :class:`Node` in topological order. A node is one
value: its ``op`` says what it computes, ``inputs`` the nodes it reads (in
order), ``attrs`` the op's data in framework-neutral form (numpy float64
arrays, :class:`reparam.kernel.Conv`), and ``origin`` a frontend handle.

Invariant kept by every rewrite: a node with an ``origin`` is exactly the node
the frontend lifted, with the inputs it had (up to replacement of an input by
an equivalent node); a frontend re-emits it as it was. Anything a rewrite
computes is a new node with ``origin=None`` that the frontend builds from its
``op`` and ``attrs``.

Ops the passes understand:

``conv``      attrs ``kernel`` (a Conv) and optionally ``refuse`` (why it may not be
              changed, e.g. a non-zero padding mode), ``dtype``.
``bn``        attrs ``mean, var, weight, bias, eps, ndim`` (inference form; also any
              per-channel affine ``y = a*x + b``) or ``refuse``; extra inputs after
              the first are constants it was lifted with.
``add``       elementwise weighted sum ``sum(coeffs[i] * inputs[i])`` (same shapes;
              attr ``coeffs``, all 1 when absent).
``identity``  returns its input.
``constant``  a stored tensor (e.g. a layer scale) read by the node it feeds.
Anything else is opaque (``op`` is the frontend's name for it) and is never
changed, moved or removed, since it may have side effects.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

PURE_OPS = frozenset({"conv", "bn", "add", "identity", "constant"})


class Node:
    __slots__ = ("op", "inputs", "attrs", "name", "origin", "users", "alive")

    def __init__(self, op: str, inputs: Iterable["Node"], attrs: dict | None = None,
                 name: str = "", origin: Any = None):
        self.op = op
        self.inputs: list[Node] = list(inputs)
        self.attrs: dict = dict(attrs or {})
        self.name = name
        self.origin = origin
        self.users: list[Node] = []  # one entry per use
        self.alive = True

    def __repr__(self) -> str:
        return f"Node({self.op} {self.name!r} <- {[i.name for i in self.inputs]})"


class Graph:
    """Nodes in topological order, with use lists kept up to date."""

    def __init__(self):
        self.nodes: list[Node] = []

    # --- building -------------------------------------------------------------
    def add(self, op: str, inputs: Iterable[Node] = (), attrs: dict | None = None,
            name: str = "", origin: Any = None, before: Node | None = None) -> Node:
        """Create a node; appended, or inserted right before ``before``."""
        node = Node(op, inputs, attrs, name, origin)
        for i in node.inputs:
            i.users.append(node)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    # --- rewriting ------------------------------------------------------------
    def replace(self, old: Node, new: Node) -> None:
        """Make every use of ``old`` read ``new``, then drop ``old`` if nothing needs it."""
        for user in old.users:  # one entry per use: each fixes one occurrence
            user.inputs[user.inputs.index(old)] = new
            new.users.append(user)
        old.users = []
        self.prune(old)

    def prune(self, node: Node) -> int:
        """Remove ``node`` if unused and pure, then its producers that become unused."""
        removed = 0
        stack = [node]
        while stack:
            n = stack.pop()
            if not n.alive or n.users or n.op not in PURE_OPS:
                continue
            n.alive = False
            self.nodes.remove(n)
            removed += 1
            for i in n.inputs:
                i.users.remove(n)
                stack.append(i)
        return removed

    # --- queries ----------------------------------------------------------------
    def op_counts(self) -> Counter:
        return Counter(n.op for n in self.nodes)

    def check(self) -> None:
        """Assert topological order and consistent use lists (for tests and debugging)."""
        seen = set()
        for n in self.nodes:
            assert n.alive, n
            for i in n.inputs:
                assert id(i) in seen, f"{n} reads {i} before it is defined"
                assert n in i.users, f"{i} does not list user {n}"
            for u in n.users:
                assert n in u.inputs, f"{u} listed as user of {n}"
            seen.add(id(n))
