"""Identity removal and dead-node cleanup."""
from __future__ import annotations

import numpy as np

from reparam.ir import PURE_OPS
from reparam.kernel import Refusal
from reparam.rewrite import rule


@rule("identity")
def drop_identity(graph, node):
    """``identity(x)`` is ``x``: its users read ``x`` directly."""
    graph.replace(node, node.inputs[0])
    return True


@rule("bn")
def drop_noop_affine(graph, node):
    """A per-channel affine that changes nothing (``x + 0``, ``x * 1``, as ``out = 0`` then
    ``out += branch`` writes a sum) is ``x``, unless something changes its result in place
    (the result is a new tensor: changing it in place does not change ``x``), or something
    may change ``x`` in place before the last read of the result (which would then see it)."""
    a, x = node.attrs, node.inputs[0]
    if not a.get("affine") or np.any(a["weight"] != 1) or np.any(a["bias"] != 0) \
            or x.type != node.type or graph.mutated(node):
        return None
    last = max(node.users, key=lambda u: u.pos, default=node)
    mutator = graph.mutation_between(x, node.pos, last.pos)
    if mutator is not None:
        return Refusal("effects", f"{mutator} may change {x.name} in place between its read "
                                  f"by {node.name} and {last.name}")
    graph.replace(node, x)
    return True


@rule(*PURE_OPS)
def remove_dead(graph, node):
    """A side-effect-free node whose value nobody reads is removed (with its unused producers)."""
    if node.users:
        return None
    return graph.prune(node) > 0
