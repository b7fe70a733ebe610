"""A BatchNorm-only branch of an Add -> depthwise 1x1 conv."""
from __future__ import annotations

from reparam.rewrite import rule

from .common import add_leaves, add_root, bn_kernel, new_conv


def _reads(node, source) -> bool:
    """``node`` is ``source`` or a conv/BN branch reading it (possibly through a conv->BN or
    conv->conv pair whose first conv nothing else reads: only then is the pair one branch)."""
    if node is source:
        return True
    if node.op in ("conv", "bn"):
        i = node.inputs[0]
        return i is source or (i.op == "conv" and i.inputs[0] is source
                               and len(i.data_users) == 1)
    return False


@rule("bn")
def bn_branch_to_conv(graph, bn):
    """BatchNorm on ``X`` feeding an Add beside another branch on ``X`` becomes a conv.

    ``y = a*x + b`` per channel is a depthwise 1x1 conv with weight ``a`` and
    bias ``b`` (:func:`reparam.kernel.from_bn`): exact, and the same cost as the
    BN (one multiply-add a channel). It lets the Add merge rule treat it as one
    more conv branch. Not a candidate when BN follows a conv it can fold into.
    """
    source = bn.inputs[0]
    if source.op == "conv" and len(source.data_users) == 1:
        return None
    if len(bn.data_users) != 1 or bn.data_users[0].op != "add":
        return None
    siblings = [n for n in add_leaves(add_root(bn.data_users[0])) if n is not bn]
    if not any(_reads(n, source) for n in siblings):
        return None
    scale = bn_kernel(bn)
    if not scale:
        return scale
    graph.replace(bn, new_conv(graph, source, scale, bn, readers=[bn], type=bn.type))
    return True
