"""Cost model: multiply-adds and parameters per output position.

All branches folded by one rewrite write the same output positions, so
comparing per-position costs compares whole-layer costs exactly, with no need
to know the input size. A rewrite is accepted only when the conv it produces
costs no more multiply-adds and no more parameters than the nodes it removes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .kernel import Conv, Refusal


@dataclass(frozen=True)
class Cost:
    macs: int = 0  # multiply-adds per output position (all channels)
    params: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs + other.macs, self.params + other.params)


def conv_cost(conv: Conv) -> Cost:
    return Cost(conv.macs_per_pixel, conv.params)


def affine_cost(channels: int) -> Cost:
    """BatchNorm or per-channel scale+shift: one multiply-add and two parameters a channel."""
    return Cost(channels, 2 * channels)


def add_cost(channels: int, operands: int) -> Cost:
    """An elementwise sum of ``operands`` tensors: ``operands - 1`` additions per element."""
    return Cost(channels * (operands - 1), 0)


def shape_cost(weight_shape: tuple[int, ...]) -> Cost:
    """Cost of a conv with this weight shape and a bias."""
    return Cost(math.prod(weight_shape), math.prod(weight_shape) + weight_shape[0])


def guard(new: Cost, replaced: Cost) -> Refusal | None:
    """Refusal when ``new`` costs more (multiply-adds or parameters) than ``replaced``."""
    c = new
    if c.macs > replaced.macs or c.params > replaced.params:
        return Refusal("cost", f"folded conv would cost more: {c.macs} vs {replaced.macs} multiply-adds "
                       f"and {c.params} vs {replaced.params} parameters per output position")
    return None
