"""Rules and the driver that applies them to a fixpoint.

A :class:`Rule` is a pattern anchored on nodes of some ops plus a rewrite. Its
function is called with ``(graph, node)`` and answers

* ``None``: the node is not a candidate for this rule (pattern does not match);
* a :class:`~reparam.kernel.Refusal`: the pattern matches but the fold would be
  inexact, costlier or unsafe; the reason is recorded (helpers deeper down may
  raise :class:`RefuseFold` instead, before changing the graph);
* ``True``: the graph was rewritten.

:func:`run` sweeps the nodes in topological order, applying every rule, until
a sweep changes nothing. Refusals are those of that last sweep, so a candidate
refused early and folded later is not reported as refused. A float32 conv a rule
makes that no rule can reach any more is *settled* (:func:`settle`): its weights
are rounded to float32 then, not when it is written.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .ir import META, OPAQUE, Graph, Node
from .kernel import Conv, Refusal


@dataclass(frozen=True)
class Rule:
    name: str
    ops: frozenset
    apply: Callable[[Graph, Node], "bool | Refusal | None"]
    doc: str = ""


def rule(*ops: str):
    """Decorator: make a rule named after the function, anchored on ``ops``."""
    def wrap(fn):
        return Rule(fn.__name__, frozenset(ops), fn, (fn.__doc__ or "").strip())
    return wrap


class RefuseFold(Exception):
    """Raised by a rule's helpers, before the graph is touched, to refuse with ``refusal``."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.reason)
        self.refusal = refusal


@dataclass(frozen=True)
class Refused:
    """A candidate a rule refused: where, why (``kind`` machine-readable, see
    :data:`reparam.kernel.KINDS`; ``reason`` for people)."""

    rule: str
    node: str
    reason: str
    kind: str
    warn: bool = False


@dataclass(frozen=True)
class Kept:
    """A conv-like or BatchNorm-like layer left in the output, and why it was not folded."""

    node: str
    op: str
    kind: str
    reason: str


def _listed(items: list, every: bool, key, line) -> list[str]:
    """``line(item, None)`` for each item (``every``), else ``line(first, count)`` per group
    of items with one ``key``."""
    if every:
        return [line(i, None) for i in items]
    return [line(g[0], len(g)) for g in _grouped(items, key)]


def _grouped(items, key) -> list[list]:
    """``items`` grouped by ``key``, groups in order of first appearance."""
    groups: dict = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    return list(groups.values())


@dataclass
class Report:
    """What a fuse did: rules fired, candidates refused (with reasons), layers kept, op counts.

    ``str(report)`` is a summary (op counts, rules fired, refusals and kept
    layers grouped by reason with a count and one example each);
    :meth:`details` lists every refusal, kept layer and note.
    """

    fired: Counter = field(default_factory=Counter)
    refused: list[Refused] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    before: Counter = field(default_factory=Counter)
    after: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "fired": dict(self.fired),
            "refused": [r.__dict__ for r in self.refused],
            "kept": [k.__dict__ for k in self.kept],
            "ops_before": dict(self.before),
            "ops_after": dict(self.after),
            "seconds": round(self.seconds, 4),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def op_table(self) -> list[str]:
        ops = sorted(set(self.before) | set(self.after))
        w = max([len(o) for o in ops] + [8])
        lines = [f"{'op':<{w}} {'before':>7} {'after':>7}"]
        return lines + [f"{o:<{w}} {self.before.get(o, 0):>7} {self.after.get(o, 0):>7}"
                        for o in ops]

    def fired_line(self) -> str:
        return "fired: " + (", ".join(f"{k} x{v}" for k, v in sorted(self.fired.items()))
                            or "nothing")

    def refusal_lines(self, every: bool = False) -> list[str]:
        """Refused candidates: each one, or (default) one line per rule and kind."""
        return _listed(self.refused, every, lambda r: (r.rule, r.kind), lambda r, n: (
            f"refused {r.rule} at {r.node} [{r.kind}]: {r.reason}" if n is None else
            f"refused {r.rule} x{n} [{r.kind}], e.g. at {r.node}: {r.reason}"))

    def kept_lines(self, every: bool = False) -> list[str]:
        """Conv-like and BatchNorm-like layers left unfolded, with why."""
        return _listed(self.kept, every, lambda k: (k.kind, k.op), lambda k, n: (
            f"kept {k.op} {k.node} [{k.kind}]: {k.reason}" if n is None else
            f"kept x{n} [{k.kind}], e.g. {k.op} {k.node}: {k.reason}"))

    def details(self) -> str:
        """Everything: op counts, rules fired, every refusal, every kept layer, every note."""
        return "\n".join(self.op_table() + [self.fired_line()] + self.refusal_lines(True)
                         + self.kept_lines(True) + self.notes)

    def __str__(self) -> str:
        lines = self.op_table() + [self.fired_line()] + self.refusal_lines() + self.kept_lines()
        lines += self.notes[:5]
        if len(self.notes) > 5:
            lines.append(f"... and {len(self.notes) - 5} more notes")
        hidden = len(self.refused) + len(self.kept) + len(self.notes)
        shown = len(self.refusal_lines()) + len(self.kept_lines()) + min(5, len(self.notes))
        if hidden > shown:
            lines.append("(summary: report.details() lists every refusal, kept layer and note)")
        return "\n".join(lines)


def kept_layers(graph: Graph, refused: list[Refused]) -> list[Kept]:
    """The conv-like and BatchNorm-like layers of ``graph`` (after rewriting), each with why
    it was not folded: a rule's refusal at it, the reason its frontend kept it opaque
    (attr ``why``), or that nothing linear borders it."""
    why = {}
    for r in refused:
        why.setdefault(r.node, r)
    kept = []
    for n in graph:
        if n.op in ("conv", "conv_transpose") and not n.attrs.get("pad") \
                and not n.attrs.get("pool"):
            r, k = why.get(n.name), n.attrs.get("kernel")
            op = "linear" if k is not None and k.ndim == 0 else n.op
            kept.append(Kept(n.name, op, r.kind, f"{r.rule}: {r.reason}") if r else
                        Kept(n.name, op, "final", "nothing linear before, after or beside it "
                             "to fold with"))
        elif n.op == "bn" and not n.attrs.get("affine"):
            r = why.get(n.name)
            kept.append(Kept(n.name, "bn", r.kind, f"{r.rule}: {r.reason}") if r else
                        Kept(n.name, "bn", "alone", "no conv before or after it to fold into and "
                             "no parallel branch to merge with"))
        elif isinstance(n.attrs.get("why"), Refusal):
            w = n.attrs["why"]
            kept.append(Kept(n.name, n.label, w.kind, w.reason))
    return kept


def settle(node: Node) -> bool:
    """Round the float64 weights of the conv ``node`` to float32, the dtype of its value,
    when no rule can fold it any more; returns whether it did.

    That is when it reads an opaque node and only opaque nodes (or metadata reads)
    read it: rules fold a conv only with the conv, BatchNorm, Add, Pad or norm it
    reads or that reads it, and never change an opaque node. Its weights are then
    written as they are rounded now (the same values, bit for bit), and a large
    model's float64 kernels do not pile up until the end of the rewrite (on RepVGG-B3,
    2x the file's size). Marked refused ("final"): a rule that reached it anyway
    would leave it, not fold its rounded weights.
    """
    k = node.attrs.get("kernel")
    if node.op != "conv" or not node.alive or not isinstance(k, Conv) \
            or k.weight.dtype != np.float64 or node.type is None \
            or node.type.dtype != "float32" or "refuse" in node.attrs:
        return False
    if not node.inputs or node.inputs[0].op != OPAQUE \
            or any(u.op not in (OPAQUE, META) for u in node.users):
        return False
    node.attrs["kernel"] = k.replace(weight=k.weight.astype(np.float32))
    node.attrs["refuse"] = Refusal("final", f"{node.name}: settled, its weights rounded to "
                                            "float32 (nothing linear borders it)")
    return True


def run(graph: Graph, rules: list[Rule], max_sweeps: int = 1000) -> Report:
    """Apply ``rules`` to ``graph`` until nothing fires; return the report."""
    report = Report(before=graph.op_counts())
    start = time.perf_counter()
    made: list[Node] = []  # the nodes a rule made, settled after it fires
    graph.on_add = made.append
    try:
        _sweep(graph, rules, report, made, max_sweeps)
    finally:
        graph.on_add = None
    report.kept = kept_layers(graph, report.refused)
    report.after = graph.op_counts()
    report.seconds = time.perf_counter() - start
    return report


def _sweep(graph: Graph, rules: list[Rule], report: Report, made: list, max_sweeps: int):
    for _ in range(max_sweeps):
        refused: dict[tuple[str, str], str] = {}
        changed = False
        pending = graph.nodes[::-1]  # popped in order, so a pruned node's weights are freed
        while pending:                # during the sweep, not at its end
            node = pending.pop()
            for r in rules:
                if not node.alive:
                    break
                if node.op not in r.ops:
                    continue
                try:
                    result = r.apply(graph, node)
                except RefuseFold as e:
                    result = e.refusal
                if isinstance(result, Refusal):
                    refused.setdefault((r.name, node.name), result)
                elif result:
                    report.fired[r.name] += 1
                    changed = True
                    for n in made:
                        settle(n)
                made.clear()
        if not changed:
            break
    else:
        raise RuntimeError(f"rewrite did not reach a fixpoint in {max_sweeps} sweeps")
    report.refused = [Refused(r, n, why.reason, why.kind, why.warn)
                      for (r, n), why in refused.items()]
