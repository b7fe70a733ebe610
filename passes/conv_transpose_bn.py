"""Transposed conv followed by BatchNorm -> one transposed conv."""
from __future__ import annotations

from reparam import kernel
from reparam.kernel import Refusal
from reparam.rewrite import rule

from .common import bn_kernel, conv_kernel, new_conv, other_users


@rule("bn")
def fold_conv_transpose_bn(graph, bn):
    """ConvTranspose -> BatchNorm(inference) (or a per-channel affine) becomes one ConvTranspose.

    The BN is ``y = a*x + b`` per output channel (:func:`reparam.kernel.from_bn`);
    :func:`reparam.kernel.scale_outputs` scales each output channel's weights and
    bias: exact for any stride, padding, output padding, dilation and groups.
    Refused when the transposed conv's output is read by anything else.
    """
    ct = bn.inputs[0]
    if ct.op != "conv_transpose":
        return None
    k = conv_kernel(ct)
    if not k:
        return k
    scale = bn_kernel(bn, k.ndim)
    if not scale:
        return scale
    if len(ct.data_users) > 1:
        return Refusal("shared", f"transposed conv {ct.name} output is also read by "
                                 f"{', '.join(other_users(ct, bn))}")
    folded = kernel.scale_outputs(k, scale.weight.reshape(-1), scale.bias)
    graph.replace(bn, new_conv(graph, ct.inputs[0], folded, ct, readers=[ct], type=bn.type,
                               folded=[(ct, True)], op="conv_transpose"))
    return True
