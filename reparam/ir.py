"""The framework-neutral, typed graph that every pass works on.

A :class:`Graph` holds :class:`Node` in topological order (a linked list: a
rewrite inserts and removes in constant time). A node is one value: its ``op``
says what it computes, ``inputs`` the nodes it reads (in order), ``attrs`` the
op's data in framework-neutral form (numpy float64 arrays,
:class:`reparam.kernel.Conv`, whose weight may be float32: as read, or settled, see
:func:`reparam.rewrite.settle`), ``type`` the :class:`TensorType` of its value
(None where it is not a tensor or the frontend could not tell), and ``origin``
a frontend handle. Passes read types, never guess them, and never see torch or
onnx objects: dtypes and devices are strings.

Invariant kept by every rewrite: a node with an ``origin`` is exactly the node
the frontend lifted, with the inputs it had (up to replacement of an input by
an equivalent node); a frontend re-emits it as it was. Anything a rewrite
computes is a new node with ``origin=None`` that the frontend builds from its
``op``, ``attrs`` and ``type``.

Ops the passes understand (``PURE_OPS``; they have no side effects):

``conv``      attrs ``kernel`` (a Conv) and optionally ``refuse`` (a
              :class:`~reparam.kernel.Refusal`: why it may not be changed, e.g. a
              non-zero padding mode) and ``shared`` (how many of its weight values
              other nodes read too: they stay whatever a fold does, so the cost
              guard does not count them as saved).
``conv_transpose``  attrs ``kernel`` (a :class:`~reparam.kernel.ConvTranspose`) and
              optionally ``refuse``.
``bn``        attrs ``mean, var, weight, bias, eps`` (inference form; also any
              per-channel affine ``y = a*x + b``) or ``refuse``; it normalises
              dimension 1 of its first input, whose type gives the rank.
``group_norm``  attrs ``groups, eps, weight, bias``: GroupNorm over dimension 1 of its
              input, then the per-channel affine ``weight * x + bias``.
``add``       elementwise weighted sum ``sum(coeffs[i] * inputs[i])`` (same types;
              attr ``coeffs``, all 1 when absent).
``identity``  returns its input (the same tensor).
``constant``  a stored tensor read by the node it feeds.
``meta``      reads metadata of its input, not its data: attr ``reads`` is ``"rank"``
              (rank, dtype, device) or ``"shape"``. It is no data use: a fold may
              make it read the value replacing its input, of the same type
              (:meth:`Graph.move_meta`).

Everything else is ``opaque`` (attr ``label`` names it, e.g. ``Relu`` or
``torch.relu_``): never changed, moved or removed, since it may have side
effects.

Side effects. Every node has a position ``pos`` (its order at lifting; a node
a rewrite inserts takes the position of the node it is inserted before) and
belongs to an alias class (tensors that may share memory: a frontend unites a
view or an in-place op's result with its input). A frontend records which
nodes may mutate which values (:meth:`Graph.mark_mutation`); a rewrite that
makes a new node read a value ``X`` checks with :meth:`Graph.mutation_between`
that ``X`` is not mutated between the reads it replaces and the new read.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

PURE_OPS = frozenset({"conv", "conv_transpose", "bn", "group_norm", "add", "identity",
                      "constant", "meta"})
OPAQUE = "opaque"
META = "meta"

#: the dtypes whose values the passes may fold (real floating point)
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


@dataclass(frozen=True)
class TensorType:
    """The type of a tensor value.

    ``dtype``: a dtype name as numpy and torch spell it (``"float32"``,
    ``"complex64"``, ``"int64"``, ...). ``shape``: None when the rank is
    unknown, else one entry per dimension, an int or None for a size that
    varies with the input (dynamic). ``device``: e.g. ``"cpu"``, ``"cuda:0"``
    (None where the frontend has no devices).
    """

    dtype: str
    shape: tuple | None
    device: str | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def channels(self) -> int | None:
        """Size of dimension 1 (``(N, C, *spatial)`` layout) when static."""
        if self.shape is None or len(self.shape) < 2 or not isinstance(self.shape[1], int):
            return None
        return self.shape[1]

    @property
    def spatial_rank(self) -> int | None:
        """Number of dimensions after ``(N, C)``; None if the rank is unknown or below 2."""
        return None if self.shape is None or len(self.shape) < 2 else len(self.shape) - 2

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


class SharedWeight:
    """A weight tensor that several nodes (or graph outputs) read, set by a frontend as the
    attr ``shared`` of each node reading it: it stays as long as one reader does, so a fold
    of one reader does not save its ``values`` elements. ``readers`` counts the reads
    left: :meth:`Graph.remove` uncounts a removed reader."""

    __slots__ = ("values", "readers")

    def __init__(self, values: int, readers: int):
        self.values = values
        self.readers = readers

    def __repr__(self) -> str:
        return f"SharedWeight({self.values} values, {self.readers} readers)"


class Node:
    __slots__ = ("op", "inputs", "attrs", "name", "origin", "users", "alive", "type", "pos",
                 "order", "prev", "next", "alias")

    def __init__(self, op: str, inputs: Iterable["Node"], attrs: dict | None = None,
                 name: str = "", origin: Any = None, type: TensorType | None = None):
        self.op = op
        self.inputs: list[Node] = list(inputs)
        self.attrs: dict = dict(attrs or {})
        self.name = name
        self.origin = origin
        self.type = type
        self.users: list[Node] = []  # one entry per use
        self.alive = True
        self.pos = 0
        self.order = 0.0  # increases along the list (see Graph.add)
        self.prev: Node | None = None
        self.next: Node | None = None
        # union-find parent of the alias class; None for a class's root (not ``self``: a
        # self-reference would keep a removed node, and its weights, until a garbage collection)
        self.alias: Node | None = None

    @property
    def data_users(self) -> list["Node"]:
        """The users that read this value's data (not only its metadata)."""
        return [u for u in self.users if u.op != META]

    @property
    def label(self) -> str:
        """What the node is, for reports: the op, or an opaque node's ``label``."""
        return self.attrs.get("label", self.op) if self.op == OPAQUE else self.op

    def __repr__(self) -> str:
        return f"Node({self.label} {self.name!r} <- {[i.name for i in self.inputs]})"


class Graph:
    """Nodes in topological order, with use lists, positions and mutation records."""

    def __init__(self):
        self._head = Node("<head>", [])  # sentinel of a circular list
        self._head.prev = self._head.next = self._head
        self._count = 0
        self._mutations: dict[Node, list[tuple[int, str]]] = {}  # alias root -> (pos, name)
        self.on_add = None  # called with every node :meth:`add` makes (see rewrite.run)

    # --- iteration --------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        n = self._head.next
        while n is not self._head:
            nxt = n.next
            yield n
            n = nxt

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def __len__(self) -> int:
        return self._count

    # --- building -------------------------------------------------------------
    def add(self, op: str, inputs: Iterable[Node] = (), attrs: dict | None = None,
            name: str = "", origin: Any = None, before: Node | None = None,
            type: TensorType | None = None) -> Node:
        """Create a node; appended (at the next position), or inserted right before
        ``before`` (at its position: see the module docstring)."""
        node = Node(op, inputs, attrs, name, origin, type)
        for i in node.inputs:
            i.users.append(node)
        last = self._head.prev
        if before is None:
            at, node.pos = self._head, (last.pos + 1 if self._count else 0)
            node.order = last.order + 1.0 if self._count else 0.0
        else:
            at, node.pos = before, before.pos
            low = before.prev.order if before.prev is not self._head else before.order - 1.0
            node.order = (low + before.order) / 2
        node.prev, node.next = at.prev, at
        at.prev.next = node
        at.prev = node
        self._count += 1
        if before is not None and not node.prev.order < node.order < before.order:
            self._renumber()  # the gap was too narrow for a float between
        if self.on_add is not None:
            self.on_add(node)
        return node

    def _renumber(self) -> None:
        for k, n in enumerate(self):
            n.order = float(k)

    def earliest(self, nodes) -> Node:
        """The one of ``nodes`` that comes first in the graph."""
        return min(nodes, key=lambda n: n.order)

    # --- aliasing and side effects ----------------------------------------------------
    def alias_root(self, node: Node) -> Node:
        while node.alias is not None:
            if node.alias.alias is not None:  # path halving
                node.alias = node.alias.alias
            node = node.alias
        return node

    def unite(self, a: Node, b: Node) -> None:
        """``a`` and ``b`` may share memory: one alias class (with both classes' mutations)."""
        ra, rb = self.alias_root(a), self.alias_root(b)
        if ra is rb:
            return
        rb.alias = ra
        moved = self._mutations.pop(rb, None)
        if moved:
            self._mutations[ra] = sorted(self._mutations.get(ra, []) + moved)

    def mark_mutation(self, value: Node, by: Node) -> None:
        """Node ``by`` may change ``value`` (and every tensor aliasing it) in place."""
        events = self._mutations.setdefault(self.alias_root(value), [])
        bisect.insort(events, (by.pos, by.name))

    def mutated(self, value: Node) -> bool:
        """Whether anything may change ``value`` in place, anywhere in the graph."""
        return bool(self._mutations.get(self.alias_root(value)))

    def mutation_between(self, value: Node, start: int, end: int) -> str | None:
        """Name of a node at a position in ``[start, end)`` that may change ``value`` in
        place (so reads at ``start`` and at ``end`` may see different contents), or None."""
        events = self._mutations.get(self.alias_root(value), [])
        k = bisect.bisect_left(events, (start, ""))
        return events[k][1] if k < len(events) and events[k][0] < end else None

    # --- rewriting ------------------------------------------------------------
    def replace(self, old: Node, new: Node) -> None:
        """Make every use of ``old`` read ``new``, then drop ``old`` if nothing needs it.

        What may happen to ``old`` in place (its users' mutations) now happens
        to ``new``: their alias classes are united.
        """
        for user in old.users:  # one entry per use: each fixes one occurrence
            user.inputs[user.inputs.index(old)] = new
            new.users.append(user)
        old.users = []
        self.unite(new, old)
        self.prune(old)

    def meta_blocker(self, old: Node, new_type: TensorType | None, same_shape: bool):
        """A metadata read of ``old`` that a value of ``new_type`` could not answer (its rank,
        dtype or device differ, or it reads the shape and ``same_shape`` is false), or None."""
        for u in old.users:
            if u.op != META:
                continue
            t = old.type
            if t is None or new_type is None or (t.rank, t.dtype, t.device) != \
                    (new_type.rank, new_type.dtype, new_type.device):
                return u
            if u.attrs["reads"] == "shape" and not (same_shape and t.shape == new_type.shape):
                return u
        return None

    def move_meta(self, old: Node, new: Node) -> None:
        """Metadata reads of ``old`` read ``new`` instead (see :meth:`meta_blocker`)."""
        for u in [u for u in old.users if u.op == META]:
            u.inputs[u.inputs.index(old)] = new
            new.users.append(u)
            old.users.remove(u)

    def remove(self, node: Node) -> None:
        """Unlink ``node`` (which nothing reads) from the graph."""
        node.alive = False
        node.prev.next = node.next
        node.next.prev = node.prev
        node.prev = node.next = None  # a removed node kept for its name holds no neighbour
        self._count -= 1
        weight = node.attrs.get("shared")
        if isinstance(weight, SharedWeight):
            weight.readers -= 1
        for i in node.inputs:
            i.users.remove(node)

    def prune(self, node: Node) -> int:
        """Remove ``node`` if unused and pure, then its producers that become unused."""
        removed = 0
        stack = [node]
        while stack:
            n = stack.pop()
            if not n.alive or n.users or n.op not in PURE_OPS:
                continue
            self.remove(n)
            removed += 1
            stack.extend(n.inputs)
        return removed

    def clear(self) -> None:
        """Remove every node. The node list, use lists and alias classes are reference
        cycles: unlinked, a graph the frontend is done with is freed at once, not left to
        the cyclic garbage collector."""
        for n in self:
            n.alive = False
            n.prev = n.next = n.alias = None
            n.inputs, n.users = [], []
        self._head.prev = self._head.next = self._head
        self._count = 0
        self._mutations = {}

    # --- queries ----------------------------------------------------------------
    def op_counts(self) -> Counter:
        return Counter(n.label for n in self)

    def check(self) -> None:
        """Assert topological order, consistent use lists and positions (for tests)."""
        seen = set()
        last = None
        for n in self:
            assert n.alive, n
            assert last is None or n.pos >= last, f"{n} at position {n.pos} after {last}"
            last = n.pos
            for i in n.inputs:
                assert id(i) in seen, f"{n} reads {i} before it is defined"
                assert n in i.users, f"{i} does not list user {n}"
            for u in n.users:
                assert n in u.inputs, f"{u} listed as user of {n}"
            seen.add(id(n))
        assert len(seen) == self._count
