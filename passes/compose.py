"""A conv (or BatchNorm) feeding only a conv -> one conv, when exact and no costlier."""
from __future__ import annotations

import math

from reparam import kernel
from reparam.cost import Cost, guard, shape_cost
from reparam.rewrite import rule

from .common import bn_kernel, conv_kernel, kernel_cost, new_conv, node_cost, runs_per_output


@rule("conv")
def compose_convs(graph, second):
    """``second(first(X))`` with nothing else reading ``first`` becomes one conv on ``X``.

    ``first`` is a conv or a BatchNorm (a depthwise 1x1 kernel, see
    :func:`reparam.kernel.from_bn`): BN before a conv that does not pad folds.

    The kernel is :func:`reparam.kernel.compose` (taps ``d1*t1 + s1*d2*t2``,
    groups ``gcd(g1, g2)``); exact when ``second`` does not pad, or ``first`` is
    pointwise without bias. Priced first: ``first`` runs ``prod(s2)`` times per
    output position of ``second`` (fewer when ``second`` pads its output longer,
    see :func:`~.common.runs_per_output`; a zero pad is free), and the composed
    conv must cost no more than both (e.g. a 1x1 conv before a depthwise 3x3 composes into a dense
    3x3: refused for cost).
    """
    first = second.inputs[0]
    if first.op not in ("conv", "bn") or len(first.data_users) != 1:
        return None
    b = conv_kernel(second)
    if not b:
        return b
    a = conv_kernel(first) if first.op == "conv" else bn_kernel(first, b.ndim)
    if not a:
        return a
    if a.ndim != b.ndim or a.out_channels != b.in_channels:
        return None
    ca = node_cost(first, a) if first.op == "conv" else kernel_cost(a)
    per_output = Cost(math.floor(ca.macs * runs_per_output(b)), ca.params)
    too_costly = guard(shape_cost(kernel.composed_shape(a, b)), per_output + node_cost(second, b))
    if too_costly is not None:
        return too_costly
    composed = kernel.compose(a, b)
    if not composed:
        return composed
    graph.replace(second, new_conv(graph, first.inputs[0], composed, second,
                                   readers=[first], type=second.type, folded=[(first, False)]))
    return True
