"""Zero padding in front of a conv -> the conv's own padding."""
from __future__ import annotations

from reparam.rewrite import rule

from .common import conv_kernel, is_zero_pad, new_conv


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
    if first.op != "conv" or len(first.data_users) != 1:
        return None
    a = conv_kernel(first)
    if not a or not is_zero_pad(a):
        return None
    b = conv_kernel(conv)
    if not b:
        return b
    if is_zero_pad(b):  # pad(pad(X)): one pad, but as a conv (the IR has no pad op) it would
        return None     # multiply every element by 1: more work than the two pads
    if a.ndim != b.ndim or a.out_channels != b.in_channels:
        return None
    pads = tuple((pb + qb, pe + qe) for (pb, pe), (qb, qe) in zip(a.pads, b.pads))
    graph.replace(conv, new_conv(graph, first.inputs[0], b.replace(pads=pads), conv,
                                 readers=[first], type=conv.type, folded=[(first, False)]))
    return True
