"""RepViT (Wang et al., "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR 2024).

The RepViT block (paper Fig. 3) separates a token mixer from a channel mixer.
Stride 1: token mixer ``RepVGGDW`` = ``BN(BN(dw3x3(x)) + dw1x1(x) + x)`` (the
3x3 depthwise conv has BN, the 1x1 depthwise conv has a bias and no BN, the
identity nothing, and a BN follows the sum), then optional SE; channel mixer
a residual FFN ``x + BN(1x1(GELU(BN(1x1(x)))))``. Stride 2: token mixer a
depthwise 3x3 conv+BN with stride 2, optional SE, 1x1 conv+BN; then the same
residual FFN. Stem: two 3x3 stride-2 conv+BN with GELU between.

Deploy conversion (the authors fuse each ``Conv2d_BN``; ``RepVGGDW`` becomes one
conv): fold the inner BN into the 3x3 kernel, zero-pad the 1x1 kernel to 3x3,
add the identity as a centre-1 depthwise kernel, then fold the outer BN into
the sum. Convs per block: stride 1: 1 (+2 with SE) + 2; stride 2: 2 (+2) + 2.
"""
from __future__ import annotations

import torch
from torch import nn

from . import (centre_pad, conv_bn_wb, conv_wb, convert_modules, count_convs, fold_bn,
               identity_kernel, make_conv, seeded)


class Conv2dBN(nn.Sequential):
    def __init__(self, cin, cout, k=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class RepVGGDW(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = Conv2dBN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, 1, 0, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.conv(x) + self.conv1(x) + x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, ratio=0.25):
        super().__init__()
        hidden = max(8, int(channels * ratio))
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class Residual(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


class RepViTBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, use_se=False):
        super().__init__()
        se = SqueezeExcite(cin) if use_se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(Conv2dBN(cin, cin, 3, 2, 1, groups=cin), se,
                                             Conv2dBN(cin, cout, 1))
        else:
            assert cin == cout
            self.token_mixer = nn.Sequential(RepVGGDW(cin), se)
        self.channel_mixer = Residual(nn.Sequential(Conv2dBN(cout, 2 * cout, 1), nn.GELU(),
                                                    Conv2dBN(2 * cout, cout, 1)))

    def forward(self, x):
        return self.channel_mixer(self.token_mixer(x))


class RepViT(nn.Module):
    SPEC = [(16, 16, 1, True), (16, 16, 1, False), (16, 32, 2, True), (32, 32, 1, True)]

    def __init__(self, spec=None):
        super().__init__()
        self.stem = nn.Sequential(Conv2dBN(3, 8, 3, 2, 1), nn.GELU(), Conv2dBN(8, 16, 3, 2, 1))
        self.blocks = nn.Sequential(*(RepViTBlock(*s) for s in spec or self.SPEC))

    def forward(self, x):
        return self.blocks(self.stem(x))


def convert_conv_bn(m: Conv2dBN) -> nn.Module:
    c = m.c
    w, b = conv_bn_wb(c, m.bn)
    return make_conv(w, b, stride=c.stride, padding=c.padding, groups=c.groups, like=c.weight)


def convert_repvggdw(m: RepVGGDW) -> nn.Module:
    ch = m.bn.num_features
    w, b = conv_bn_wb(m.conv.c, m.conv.bn)
    w1, b1 = conv_wb(m.conv1)
    w = w + centre_pad(w1, 3) + identity_kernel(ch, ch, 3)
    w, b = fold_bn(w, b + b1, m.bn)
    return make_conv(w, b, stride=1, padding=1, groups=ch, like=m.conv.c.weight)


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(RepVGGDW, convert_repvggdw), (Conv2dBN, convert_conv_bn)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(RepVGGDW, 1), (Conv2dBN, 1)])


def cases():
    return {
        "net": (seeded(0, RepViT), (2, 3, 30, 29)),
        "repvggdw": (seeded(1, lambda: RepVGGDW(16)), (2, 16, 9, 10)),
    }
