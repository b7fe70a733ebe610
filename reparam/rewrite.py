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
refused early and folded later is not reported as refused.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .ir import Graph, Node
from .kernel import Refusal


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
    rule: str
    node: str
    reason: str
    warn: bool = False


@dataclass
class Report:
    """What a fuse did: rules fired, candidates refused (with reasons), op counts."""

    fired: Counter = field(default_factory=Counter)
    refused: list[Refused] = field(default_factory=list)
    before: Counter = field(default_factory=Counter)
    after: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "fired": dict(self.fired),
            "refused": [r.__dict__ for r in self.refused],
            "ops_before": dict(self.before),
            "ops_after": dict(self.after),
            "seconds": round(self.seconds, 4),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        ops = sorted(set(self.before) | set(self.after))
        w = max([len(o) for o in ops] + [8])
        lines = [f"{'op':<{w}} {'before':>7} {'after':>7}"]
        lines += [f"{o:<{w}} {self.before.get(o, 0):>7} {self.after.get(o, 0):>7}" for o in ops]
        lines.append("fired: " + (", ".join(f"{k} x{v}" for k, v in sorted(self.fired.items()))
                                  or "nothing"))
        for r in self.refused:
            lines.append(f"refused {r.rule} at {r.node}: {r.reason}")
        lines += self.notes
        return "\n".join(lines)


def run(graph: Graph, rules: list[Rule], max_sweeps: int = 1000) -> Report:
    """Apply ``rules`` to ``graph`` until nothing fires; return the report."""
    report = Report(before=graph.op_counts())
    start = time.perf_counter()
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
        if not changed:
            break
    else:
        raise RuntimeError(f"rewrite did not reach a fixpoint in {max_sweeps} sweeps")
    report.refused = [Refused(r, n, why.reason, why.warn) for (r, n), why in refused.items()]
    report.after = graph.op_counts()
    report.seconds = time.perf_counter() - start
    return report
