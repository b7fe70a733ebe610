"""RepVGG (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021).

Training-time block (paper Fig. 2/4): ``ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))``;
the identity (BN-only) branch exists only when input and output shapes match
(same channels, stride 1), so the first block of a stage (stride 2) has none.
RepVGG-A/B "g2"/"g4" variants make some layers grouped convs (3x3 and 1x1 alike).

Deploy conversion (paper Sec. 3.3): fold each BN into its conv, turn the 1x1
kernel into a 3x3 by zero padding and the identity into a 3x3 kernel with a 1
at the centre of each channel's own input (per group), add the three kernels
and biases: one 3x3 conv per block, followed by the ReLU.
"""
from __future__ import annotations

from torch import nn

from . import (ConvBN, bn_kernel, centre_pad, conv_bn_wb, convert_modules, count_convs, make_conv,
               seeded)


class RepVGGBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, groups=1):
        super().__init__()
        self.stride, self.groups = stride, groups
        self.dense = ConvBN(cin, cout, 3, stride, 1, groups)
        self.pointwise = ConvBN(cin, cout, 1, stride, 0, groups)
        self.skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.act = nn.ReLU()

    def forward(self, x):
        out = self.dense(x) + self.pointwise(x)
        if self.skip is not None:
            out = out + self.skip(x)
        return self.act(out)


class RepVGGNet(nn.Module):
    """Stages of RepVGG blocks; ``(cin, cout, stride, groups)`` per block, no classifier."""

    SPEC = [(3, 16, 2, 1), (16, 32, 2, 1), (32, 32, 1, 2), (32, 32, 1, 1),
            (32, 64, 2, 4), (64, 64, 1, 4), (64, 64, 1, 2)]

    def __init__(self, spec=None):
        super().__init__()
        self.blocks = nn.Sequential(*(RepVGGBlock(*s) for s in (spec or self.SPEC)))

    def forward(self, x):
        return self.blocks(x)


def convert_block(block: RepVGGBlock) -> nn.Module:
    w, b = conv_bn_wb(block.dense.conv, block.dense.bn)
    w1, b1 = conv_bn_wb(block.pointwise.conv, block.pointwise.bn)
    w, b = w + centre_pad(w1, 3), b + b1
    if block.skip is not None:
        wi, bi = bn_kernel(block.skip, block.groups, 3)
        w, b = w + wi, b + bi
    conv = make_conv(w, b, stride=block.stride, padding=1, groups=block.groups,
                     like=block.dense.conv.weight)
    return nn.Sequential(conv, nn.ReLU())


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(RepVGGBlock, convert_block)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(RepVGGBlock, 1)])


def cases():
    return {
        "net": (seeded(0, RepVGGNet), (2, 3, 29, 30)),
        "block_identity_g4": (seeded(1, lambda: RepVGGBlock(16, 16, 1, 4)), (2, 16, 9, 11)),
        "block_s2_g2": (seeded(2, lambda: RepVGGBlock(8, 16, 2, 2)), (2, 8, 11, 10)),
    }
