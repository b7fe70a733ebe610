"""QARepVGG (Chu et al., "Make RepVGG Greater Again: A Quantization-aware Approach",
AAAI 2024).

The quantization-friendly RepVGG block: the 3x3 branch keeps its BN, the 1x1
branch has no BN (and no bias), the identity branch has no BN, and one BN
follows the sum: ``ReLU(BN(BN(conv3x3(x)) + conv1x1(x) + x))``. As in RepVGG
the identity exists only for matching shapes (same channels, stride 1), and
the convs may be grouped.

Deploy conversion: fold the 3x3's BN, zero-pad the 1x1 kernel to 3x3, add the
identity kernel (per group), then fold the post-sum BN: one 3x3 conv per block.
"""
from __future__ import annotations

from torch import nn

from . import (ConvBN, centre_pad, conv_bn_wb, conv_wb, convert_modules, count_convs, fold_bn,
               identity_kernel, make_conv, seeded)


class QARepVGGBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, groups=1):
        super().__init__()
        self.stride, self.groups = stride, groups
        self.dense = ConvBN(cin, cout, 3, stride, 1, groups)
        self.pointwise = nn.Conv2d(cin, cout, 1, stride, 0, groups=groups, bias=False)
        self.identity = nn.Identity() if cin == cout and stride == 1 else None
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        out = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(self.bn(out))


class QARepVGGNet(nn.Module):
    SPEC = [(3, 16, 2, 1), (16, 16, 1, 1), (16, 32, 2, 1), (32, 32, 1, 2), (32, 32, 1, 4),
            (32, 48, 2, 2)]

    def __init__(self, spec=None):
        super().__init__()
        self.blocks = nn.Sequential(*(QARepVGGBlock(*s) for s in spec or self.SPEC))

    def forward(self, x):
        return self.blocks(x)


def convert_block(block: QARepVGGBlock) -> nn.Module:
    w, b = conv_bn_wb(block.dense.conv, block.dense.bn)
    w = w + centre_pad(conv_wb(block.pointwise)[0], 3)
    if block.identity is not None:
        w = w + identity_kernel(w.shape[0], block.groups, 3)
    w, b = fold_bn(w, b, block.bn)
    conv = make_conv(w, b, stride=block.stride, padding=1, groups=block.groups,
                     like=block.dense.conv.weight)
    return nn.Sequential(conv, nn.ReLU())


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(QARepVGGBlock, convert_block)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(QARepVGGBlock, 1)])


def cases():
    return {
        "net": (seeded(0, QARepVGGNet), (2, 3, 29, 30)),
        "block_identity_g2": (seeded(1, lambda: QARepVGGBlock(16, 16, 1, 2)), (2, 16, 9, 10)),
    }
