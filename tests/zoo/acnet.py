"""ACNet (Ding et al., "ACNet: Strengthening the Kernel Skeletons for Powerful CNN via
Asymmetric Convolution Blocks", ICCV 2019).

An Asymmetric Convolution Block (ACB) replaces a ``k x k`` conv (+BN) by three
parallel conv+BN branches on the same input, summed: the ``k x k`` square
kernel, a horizontal ``1 x k`` and a vertical ``k x 1`` kernel (paddings
``(0, k//2)`` and ``(k//2, 0)`` so the three outputs line up, for any stride).
The activation follows the sum, as it followed the conv it replaces.

Deploy conversion (paper Sec. 3.3, "branch fusion"): fold each BN into its
kernel, then add the horizontal kernel onto the centre row and the vertical
kernel onto the centre column of the square kernel ("additivity of
convolution"); biases add. One ``k x k`` conv per ACB.
"""
from __future__ import annotations

from torch import nn

from . import ConvBN, centre_pad, conv_bn_wb, convert_modules, count_convs, make_conv, seeded


class ACBlock(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__()
        p = k // 2
        self.k, self.stride, self.groups = k, stride, groups
        self.square = ConvBN(cin, cout, (k, k), stride, (p, p), groups)
        self.hor = ConvBN(cin, cout, (1, k), stride, (0, p), groups)
        self.ver = ConvBN(cin, cout, (k, 1), stride, (p, 0), groups)

    def forward(self, x):
        return self.square(x) + self.hor(x) + self.ver(x)


class ACNet(nn.Module):
    """ACB + ReLU layers: ``(cin, cout, k, stride, groups)``: dense, strided, grouped,
    depthwise 5x5 (groups = channels)."""

    SPEC = [(3, 16, 3, 1, 1), (16, 32, 3, 2, 1), (32, 32, 3, 1, 2), (32, 32, 5, 1, 32),
            (32, 48, 3, 2, 4)]

    def __init__(self, spec=None):
        super().__init__()
        layers = []
        for cin, cout, k, s, g in spec or self.SPEC:
            layers += [ACBlock(cin, cout, k, s, g), nn.ReLU()]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


def convert_block(block: ACBlock) -> nn.Module:
    k = block.k
    w, b = conv_bn_wb(block.square.conv, block.square.bn)
    wh, bh = conv_bn_wb(block.hor.conv, block.hor.bn)
    wv, bv = conv_bn_wb(block.ver.conv, block.ver.bn)
    w = w + centre_pad(wh, k) + centre_pad(wv, k)  # centre row / centre column
    return make_conv(w, b + bh + bv, stride=block.stride, padding=k // 2, groups=block.groups,
                     like=block.square.conv.weight)


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(ACBlock, convert_block)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(ACBlock, 1)])


def cases():
    return {
        "net": (seeded(0, ACNet), (2, 3, 27, 30)),
        "block_k5_s2_g2": (seeded(1, lambda: ACBlock(8, 12, 5, 2, 2)), (2, 8, 13, 14)),
    }
