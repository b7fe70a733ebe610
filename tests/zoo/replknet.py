"""RepLKNet (Ding et al., "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design
in CNNs", CVPR 2022).

The large depthwise kernel is re-parameterized with a small kernel beside it
(paper Sec. 3, guideline 3): ``LK(x) = BN(dwKxK(x)) + BN(dw5x5(x))``. A RepLK block
(paper Fig. 4) is ``x + pw2(ReLU(LK(pw1(preBN(x)))))``: pre-BN, 1x1 conv+BN+ReLU,
the re-parameterized large kernel, ReLU, 1x1 conv+BN, shortcut. The ConvFFN
block is ``x + pw2(GELU(pw1(preBN(x))))`` with 1x1 conv+BN ``pw1``/``pw2``.
Stem: 3x3 s2, dw 3x3, 1x1, dw 3x3 s2 (all conv+BN+ReLU); a transition is 1x1
then dw 3x3 s2 (conv+BN+ReLU).

Deploy conversion (paper Sec. 3): fold each BN into its conv and add the
small kernel, zero padded, to the centre of the large one: one ``K x K``
depthwise conv. Conv-BN pairs outside the large kernel are fused as usual. The
authors keep the pre-BNs as BatchNorm layers, and so does this conversion (a BN
is not a conv: the count is the same either way); each feeds only a 1x1 conv,
which pads nothing, so folding it into that conv, as a compiler may, is exact.
"""
from __future__ import annotations

from torch import nn

from . import centre_pad, conv_bn_wb, convert_modules, count_convs, make_conv, seeded


class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, groups=1, relu=False):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                                          bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        if relu:
            self.add_module("nonlinear", nn.ReLU())


class ReparamLargeKernelConv(nn.Module):
    def __init__(self, cin, cout, k, stride, groups, small_kernel):
        super().__init__()
        self.k, self.stride, self.groups = k, stride, groups
        self.lkb_origin = ConvBN(cin, cout, k, stride, groups)
        self.small_conv = ConvBN(cin, cout, small_kernel, stride, groups)

    def forward(self, x):
        return self.lkb_origin(x) + self.small_conv(x)


class RepLKBlock(nn.Module):
    def __init__(self, channels, dw_channels, k, small_kernel):
        super().__init__()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.pw1 = ConvBN(channels, dw_channels, 1, relu=True)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, dw_channels, k, 1, dw_channels,
                                                   small_kernel)
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = ConvBN(dw_channels, channels, 1)

    def forward(self, x):
        out = self.pw1(self.prelkb_bn(x))
        out = self.lk_nonlinear(self.large_kernel(out))
        return x + self.pw2(out)


class ConvFFN(nn.Module):
    def __init__(self, channels, hidden):
        super().__init__()
        self.preffn_bn = nn.BatchNorm2d(channels)
        self.pw1 = ConvBN(channels, hidden, 1)
        self.nonlinear = nn.GELU()
        self.pw2 = ConvBN(hidden, channels, 1)

    def forward(self, x):
        return x + self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))


class RepLKNet(nn.Module):
    """Stem, stage (RepLK 31x31 + ConvFFN), transition, stage (RepLK 13x13 + ConvFFN),
    then a stride-2 depthwise 7x7 re-parameterized large kernel (small 3x3) with ReLU."""

    def __init__(self, c1=16, c2=32):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, c1, 3, 2, relu=True),
                                  ConvBN(c1, c1, 3, 1, groups=c1, relu=True),
                                  ConvBN(c1, c1, 1, relu=True),
                                  ConvBN(c1, c1, 3, 2, groups=c1, relu=True))
        self.stage1 = nn.Sequential(RepLKBlock(c1, c1, 31, 5), ConvFFN(c1, 4 * c1))
        self.transition = nn.Sequential(ConvBN(c1, c2, 1, relu=True),
                                        ConvBN(c2, c2, 3, 2, groups=c2, relu=True))
        self.stage2 = nn.Sequential(RepLKBlock(c2, c2, 13, 5), ConvFFN(c2, 2 * c2))
        self.down = nn.Sequential(ReparamLargeKernelConv(c2, c2, 7, 2, c2, 3), nn.ReLU())

    def forward(self, x):
        x = self.stage1(self.stem(x))
        return self.down(self.stage2(self.transition(x)))


def convert_large_kernel(m: ReparamLargeKernelConv) -> nn.Module:
    w, b = conv_bn_wb(m.lkb_origin.conv, m.lkb_origin.bn)
    ws, bs = conv_bn_wb(m.small_conv.conv, m.small_conv.bn)
    return make_conv(w + centre_pad(ws, m.k), b + bs, stride=m.stride, padding=m.k // 2,
                     groups=m.groups, like=m.lkb_origin.conv.weight)


def convert_conv_bn(m: ConvBN) -> nn.Module:
    c = m.conv
    conv = make_conv(*conv_bn_wb(c, m.bn), stride=c.stride, padding=c.padding, groups=c.groups,
                     like=c.weight)
    return nn.Sequential(conv, nn.ReLU()) if hasattr(m, "nonlinear") else conv


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(ReparamLargeKernelConv, convert_large_kernel),
                                   (ConvBN, convert_conv_bn)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(ReparamLargeKernelConv, 1), (ConvBN, 1)])


def cases():
    return {
        "net": (seeded(0, RepLKNet), (2, 3, 62, 64)),
        "large_kernel_31": (seeded(1, lambda: ReparamLargeKernelConv(8, 8, 31, 1, 8, 5)),
                            (2, 8, 17, 20)),
        "replk_block": (seeded(2, lambda: RepLKBlock(8, 16, 13, 5)), (2, 8, 12, 11)),
    }
