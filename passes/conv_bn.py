"""Conv followed by BatchNorm -> one conv."""
from __future__ import annotations

from reparam import kernel
from reparam.kernel import Refusal
from reparam.rewrite import rule

from .common import bn_kernel, conv_kernel, new_conv, other_users


@rule("bn")
def fold_conv_bn(graph, bn):
    """Conv -> BatchNorm(inference) becomes one conv.

    With ``a = gamma / sqrt(var + eps)``: ``W'[o] = a[o] W[o]`` and
    ``b'[o] = a[o] (b[o] - mean[o]) + beta[o]``; BN is pointwise, so this is
    :func:`reparam.kernel.compose` with no padding on the second conv: exact.
    Refused when the conv's output is read by anything else (the conv would
    have to stay, so nothing is saved).
    """
    conv = bn.inputs[0]
    if conv.op != "conv":
        return None
    k = conv_kernel(conv)
    if not k:
        return k
    scale = bn_kernel(bn, k.ndim)
    if not scale:
        return scale
    if len(conv.data_users) > 1:
        return Refusal("shared", f"conv {conv.name} output is also read by "
                                 f"{', '.join(other_users(conv, bn))}")
    folded = kernel.compose(k, scale)
    graph.replace(bn, new_conv(graph, conv.inputs[0], folded, conv, readers=[conv],
                               type=bn.type, folded=[(conv, True)]))
    return True
