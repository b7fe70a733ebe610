"""Conv (or transposed conv) followed by BatchNorm -> one conv."""
from __future__ import annotations

from reparam import kernel
from reparam.kernel import Refusal
from reparam.rewrite import rule

from .common import bn_kernel, conv_kernel, new_conv, other_users


@rule("bn")
def fold_conv_bn(graph, bn):
    """Conv (or ConvTranspose) -> BatchNorm(inference) (or a per-channel affine) becomes one
    conv (one ConvTranspose).

    With ``a = gamma / sqrt(var + eps)``: ``W'[o] = a[o] W[o]`` and
    ``b'[o] = a[o] (b[o] - mean[o]) + beta[o]``; BN is pointwise, so for a conv this is
    :func:`reparam.kernel.compose` with no padding on the second conv, for a transposed
    conv :func:`reparam.kernel.scale_outputs`: exact for any stride, padding, dilation
    and groups. Refused when the conv's output is read by anything else (the conv would
    have to stay, so nothing is saved), and when other nodes read the conv's weights
    too (a frontend's attr ``shared``): they stay, and the folded copy would add more
    weight values than the BatchNorm's it saves.
    """
    conv = bn.inputs[0]
    if conv.op not in ("conv", "conv_transpose"):
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
    shared = conv.attrs.get("shared", 0)  # weight values other nodes read: they stay
    if shared > 2 * k.out_channels:         # beside the folded conv's, which saves only BN's
        return Refusal("cost", f"conv {conv.name} shares {shared} weight values with other "
                               f"nodes, which keep them: the fold would add {shared} and save "
                               f"{2 * k.out_channels}")
    folded = kernel.compose(k, scale) if conv.op == "conv" else \
        kernel.scale_outputs(k, scale.weight.reshape(-1), scale.bias)
    graph.replace(bn, new_conv(graph, conv.inputs[0], folded, conv, readers=[conv],
                               type=bn.type, folded=[(conv, True)], op=conv.op))
    return True
