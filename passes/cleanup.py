"""Identity removal and dead-node cleanup."""
from __future__ import annotations

from reparam.ir import PURE_OPS
from reparam.rewrite import rule


@rule("identity")
def drop_identity(graph, node):
    """``identity(x)`` is ``x``: its users read ``x`` directly."""
    graph.replace(node, node.inputs[0])
    return True


@rule(*PURE_OPS)
def remove_dead(graph, node):
    """A side-effect-free node whose value nobody reads is removed (with its unused producers)."""
    if node.users:
        return None
    return graph.prune(node) > 0
