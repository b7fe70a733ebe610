"""Zero padding in front of a conv -> the conv's own padding."""
from __future__ import annotations

import numpy as np

from reparam.kernel import Conv
from reparam.rewrite import rule

from .common import conv_kernel, new_conv


def is_zero_pad(k: Conv) -> bool:
    """``k`` only zero-pads: depthwise 1x..x1 weights all 1, stride and dilation 1, no bias.

    (The ONNX frontend lifts ``Pad`` with constant 0 in this form.)
    """
    return (k.groups == k.out_channels == k.in_channels
            and all(s == 1 for s in k.kernel_size + k.stride + k.dilation)
            and not np.any(k.bias) and bool(np.all(k.weight == 1)))


@rule("conv")
def absorb_zero_pad(graph, conv):
    """``conv(pad(X))``, ``pad`` a zero padding read by nothing else -> ``conv`` padding more.

    Zero-padding ``X`` by ``p`` and the result by ``q`` is zero-padding ``X``
    by ``p + q`` (per dimension and side), whatever ``conv``'s stride,
    dilation or groups: always exact, and the pad node goes away. This is the
    case :func:`reparam.kernel.compose` refuses (``second`` pads, ``first`` is
    not free of padding), because there the first conv's padding is not
    zeros in general; for a pure zero pad it is.
    """
    first = conv.inputs[0]
    if first.op != "conv" or len(first.users) != 1:
        return None
    a = conv_kernel(first)
    if not a or not is_zero_pad(a):
        return None
    b = conv_kernel(conv)
    if not b:
        return b
    if a.ndim != b.ndim or a.out_channels != b.in_channels:
        return None
    pads = tuple((pb + qb, pe + qe) for (pb, pe), (qb, qe) in zip(a.pads, b.pads))
    graph.replace(conv, new_conv(graph, first.inputs[0], b.replace(pads=pads), conv, before=conv))
    return True
