"""A per-channel affine after a GroupNorm -> the GroupNorm's own affine."""
from __future__ import annotations

import numpy as np

from reparam.kernel import Refusal
from reparam.rewrite import rule

from .common import bn_kernel, conv_kernel, new_layer


def _channel_affine(node):
    """``(a, b)`` of ``y = a*x + b`` per channel for a BatchNorm / per-channel affine or a
    depthwise 1x..x1 conv without padding, stride or dilation; None for other nodes."""
    if node.op == "bn":
        k = bn_kernel(node)
    elif node.op == "conv":
        k = conv_kernel(node)
        if k and not (k.groups == k.in_channels == k.out_channels and
                      all(v == 1 for v in k.kernel_size + k.stride + k.dilation) and
                      not any(a or b for a, b in k.pads)):
            return None
    else:
        return None
    return k if not k else (k.weight.reshape(-1).astype(np.float64), k.bias)


@rule("bn", "conv")
def fold_affine_into_norm(graph, node):
    """``a * GroupNorm(x) + b`` per channel becomes one GroupNorm with weight ``a * gamma`` and
    bias ``a * beta + b``: GroupNorm ends with its own per-channel affine, so this is exact.
    Refused when the norm's output is read by anything else."""
    norm = node.inputs[0]
    if norm.op != "group_norm":
        return None
    ab = _channel_affine(node)
    if ab is None or isinstance(ab, Refusal):
        return ab
    if len(norm.data_users) > 1:
        return Refusal("shared", f"{norm.name} output is also read elsewhere")
    a, b = ab
    attrs = {**norm.attrs, "weight": a * norm.attrs["weight"], "bias": a * norm.attrs["bias"] + b}
    attrs = {k: v for k, v in attrs.items() if k != "fx_inputs"}
    graph.replace(node, new_layer(graph, "group_norm", norm.inputs[0], attrs,
                                  (attrs["weight"], attrs["bias"]), norm, [norm], node.type,
                                  [(norm, True)]))
    return True

