"""MobileOne (Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone",
CVPR 2023).

A MobileOne block (paper Fig. 3) sums, on one input: ``k`` over-parameterized
``kxk`` conv+BN branches, a ``1x1`` conv+BN "scale" branch (only when the kernel
is larger than 1x1) and a BN-only skip branch (only when the shapes match:
same channels, stride 1); then (optional) squeeze-excite and ReLU. The basic
MobileOne unit is a depthwise 3x3 block (groups = channels, stride 1 or 2)
followed by a pointwise 1x1 block (groups 1); the stem is a dense 3x3 block.

Deploy conversion (paper Sec. 3.1): fold every BN into its conv, zero-pad the
1x1 kernel to kxk, write the skip BN as a kxk kernel with its per-channel
scale at the centre, and add all kernels and biases: one conv per block
(the SE's two 1x1 convs stay).
"""
from __future__ import annotations

import torch
from torch import nn

from . import (ConvBN, bn_kernel, centre_pad, conv_bn_wb, convert_modules, count_convs, make_conv,
               seeded)


class SEBlock(nn.Module):
    """Squeeze-excite: global mean, 1x1 reduce, ReLU, 1x1 expand, sigmoid gate."""

    def __init__(self, channels, ratio=0.25):
        super().__init__()
        hidden = max(1, int(channels * ratio))
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(s))))
        return x * s


class MobileOneBlock(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, branches=1, use_se=False):
        super().__init__()
        self.k, self.stride, self.groups = k, stride, groups
        self.skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.branches = nn.ModuleList(ConvBN(cin, cout, k, stride, k // 2, groups)
                                      for _ in range(branches))
        self.scale = ConvBN(cin, cout, 1, stride, 0, groups) if k > 1 else None
        self.se = SEBlock(cout) if use_se else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        outs = [branch(x) for branch in self.branches]
        if self.scale is not None:
            outs.append(self.scale(x))
        if self.skip is not None:
            outs.append(self.skip(x))
        out = outs[0]
        for o in outs[1:]:
            out = out + o
        return self.act(self.se(out))


class MobileOneNet(nn.Module):
    """Stem (dense 3x3 block, stride 2) and MobileOne units (depthwise 3x3 block, then
    pointwise 1x1 block), ``(cin, cout, stride, se)`` per unit, ``branches`` each."""

    SPEC = [(16, 32, 2, False), (32, 32, 1, False), (32, 48, 2, True), (48, 48, 1, True)]

    def __init__(self, spec=None, branches=3):
        super().__init__()
        layers = [MobileOneBlock(3, 16, 3, 2, 1, branches)]
        for cin, cout, s, se in spec or self.SPEC:
            layers.append(MobileOneBlock(cin, cin, 3, s, cin, branches, se))
            layers.append(MobileOneBlock(cin, cout, 1, 1, 1, branches, se))
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


def convert_block(block: MobileOneBlock) -> nn.Module:
    k, g = block.k, block.groups
    kernels = [conv_bn_wb(b.conv, b.bn) for b in block.branches]
    if block.scale is not None:
        w1, b1 = conv_bn_wb(block.scale.conv, block.scale.bn)
        kernels.append((centre_pad(w1, k), b1))
    if block.skip is not None:
        kernels.append(bn_kernel(block.skip, g, k))
    w = sum(kw for kw, _ in kernels)
    b = sum(kb for _, kb in kernels)
    conv = make_conv(w, b, stride=block.stride, padding=k // 2, groups=g,
                     like=block.branches[0].conv.weight)
    return nn.Sequential(conv, block.se, nn.ReLU())


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(MobileOneBlock, convert_block)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(MobileOneBlock,
                                lambda m: 1 + (2 if isinstance(m.se, SEBlock) else 0))])


def cases():
    return {
        "net": (seeded(0, MobileOneNet), (2, 3, 29, 30)),
        "block_depthwise_s1_se": (seeded(1, lambda: MobileOneBlock(16, 16, 3, 1, 16, 4, True)),
                                  (2, 16, 9, 10)),
        "block_pointwise": (seeded(2, lambda: MobileOneBlock(16, 16, 1, 1, 1, 2)),
                            (2, 16, 7, 6)),
    }
