"""Conv (or transposed conv) followed by BatchNorm -> one conv; a sum's coefficient -> its conv."""
from __future__ import annotations

from reparam import kernel
from reparam.kernel import Refusal
from reparam.rewrite import rule

from .common import (add_coeffs, bn_kernel, conv_kernel, is_zero_pad, new_conv, other_users,
                     shared_values)


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
    weight values than the BatchNorm's it saves. Two BatchNorms (or per-channel affines)
    in a row become one depthwise 1x..x1 conv, which a sum of branches can merge.
    """
    conv = bn.inputs[0]
    if conv.op == "bn":
        return _fold_affines(graph, conv, bn)
    if conv.op not in ("conv", "conv_transpose"):
        return None
    k = conv_kernel(conv)
    scale = _second_affine(conv, k, bn) if k else k
    if not scale:
        return scale
    shared = shared_values(conv)  # weight values other nodes read: they stay
    if shared > 2 * k.out_channels:         # beside the folded conv's, which saves only BN's
        return Refusal("cost", f"conv {conv.name} shares {shared} weight values with other "
                               f"nodes, which keep them: the fold would add {shared} and save "
                               f"{2 * k.out_channels}")
    folded = kernel.compose(k, scale) if conv.op == "conv" else \
        kernel.scale_outputs(k, scale.weight.reshape(-1), scale.bias)
    graph.replace(bn, new_conv(graph, conv.inputs[0], folded, conv, readers=[conv],
                               type=bn.type, folded=[(conv, True)], op=conv.op))
    return True


def _fold_affines(graph, first, second):
    """``second(first(x))``, both per-channel affines, as one depthwise 1x..x1 conv of ``x``."""
    a = bn_kernel(first)
    b = _second_affine(first, a, second) if a else a
    if not b:
        return b
    graph.replace(second, new_conv(graph, first.inputs[0], kernel.compose(a, b), first,
                                   readers=[first], type=second.type, folded=[(first, True)]))
    return True


def _second_affine(first, k, second):
    """``second``'s per-channel affine (of ``k``'s rank), or why ``first`` (kernel ``k``) and
    ``second`` do not fold: not an affine, or ``first``'s output is read elsewhere too."""
    scale = bn_kernel(second, k.ndim)
    if scale and len(first.data_users) > 1:
        return Refusal("shared", f"{first.op} {first.name} output is also read by "
                                 f"{', '.join(other_users(first, second))}")
    return scale


@rule("add")
def fold_sum_coefficient(graph, add):
    """A term ``c * conv(X)`` of a weighted sum (``c`` not 1 or -1: ``torch.add(a, b, alpha=c)``
    left after a merge), whose conv nothing else reads, becomes ``conv'(X)`` with ``c`` in its
    weights and bias: exact, and the sum needs no multiply for it. A term ``c * bn(X)`` (a
    BatchNorm or per-channel affine) becomes the depthwise 1x..x1 conv ``c * bn``, which
    costs what the affine did."""
    coeffs = add_coeffs(add)
    for i, (term, c) in enumerate(zip(add.inputs, coeffs)):
        if abs(c) == 1 or term.op not in ("conv", "bn") or len(term.data_users) != 1 \
                or graph.mutated(term) or shared_values(term):  # (weights others read: a
            continue                                           # scaled copy adds them)
        k = conv_kernel(term) if term.op == "conv" else bn_kernel(term)
        if not k or term.op == "conv" and is_zero_pad(k):  # a pad is free; scaled, it multiplies
            continue
        scaled = new_conv(graph, term.inputs[0], kernel.scale(k, c),
                          term, readers=[term], type=term.type, folded=[(term, True)])
        rest = coeffs[:i] + (1.0,) + coeffs[i + 1:]
        attrs = {"coeffs": rest} if any(v != 1 for v in rest) else {}
        inputs = add.inputs[:i] + [scaled] + add.inputs[i + 1:]
        graph.replace(add, graph.add("add", inputs, attrs, add.name, before=add, type=add.type))
        return True
    return None
