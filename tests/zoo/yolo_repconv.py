"""YOLO-style RepConv (the RepVGG block as used in YOLOv6/YOLOv7/RT-DETR/YOLOv9 necks).

``act(BN(conv3x3(x)) + BN(conv1x1(x)) [+ BN(x)])`` with SiLU after the sum; the
identity-BN branch is optional (some detectors omit it) and exists only for
matching shapes. ``Conv`` is the detectors' conv+BN+SiLU unit; a
``RepBottleneck`` is ``x + Conv3x3(RepConv(x))``.

Deploy conversion (the RepVGG method): fold the BNs, zero-pad the 1x1 kernel
to 3x3, write the identity BN as a 3x3 kernel with its scale at the centre
(per group), add: one 3x3 conv (then SiLU) per RepConv; each Conv's BN folds
into its conv.
"""
from __future__ import annotations

from torch import nn

from . import (bn_kernel, centre_pad, conv_bn_wb, convert_modules, count_convs, make_conv,
               seeded)


class Conv(nn.Module):
    """conv + BN (+ SiLU)."""

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RepConv(nn.Module):
    def __init__(self, c1, c2, s=1, g=1, identity_bn=False):
        super().__init__()
        self.s, self.g = s, g
        self.conv1 = Conv(c1, c2, 3, s, g, act=False)
        self.conv2 = Conv(c1, c2, 1, s, g, act=False)
        self.bn = nn.BatchNorm2d(c1) if identity_bn and c1 == c2 and s == 1 else None
        self.act = nn.SiLU()

    def forward(self, x):
        y = self.conv1(x) + self.conv2(x)
        if self.bn is not None:
            y = y + self.bn(x)
        return self.act(y)


class RepBottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1 = RepConv(c, c)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class RepConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(Conv(3, 16, 3, 2), RepConv(16, 16, identity_bn=True),
                                    RepConv(16, 32, s=2), RepBottleneck(32),
                                    RepConv(32, 32, g=2, identity_bn=True),
                                    RepConv(32, 48, s=2, g=4))

    def forward(self, x):
        return self.layers(x)


def convert_repconv(m: RepConv) -> nn.Module:
    w, b = conv_bn_wb(m.conv1.conv, m.conv1.bn)
    w1, b1 = conv_bn_wb(m.conv2.conv, m.conv2.bn)
    w, b = w + centre_pad(w1, 3), b + b1
    if m.bn is not None:
        wi, bi = bn_kernel(m.bn, m.g, 3)
        w, b = w + wi, b + bi
    conv = make_conv(w, b, stride=m.s, padding=1, groups=m.g, like=m.conv1.conv.weight)
    return nn.Sequential(conv, nn.SiLU())


def convert_conv(m: Conv) -> nn.Module:
    c = m.conv
    conv = make_conv(*conv_bn_wb(c, m.bn), stride=c.stride, padding=c.padding, groups=c.groups,
                     like=c.weight)
    return nn.Sequential(conv, m.act)


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(RepConv, convert_repconv), (Conv, convert_conv)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(RepConv, 1), (Conv, 1)])


def cases():
    return {
        "net": (seeded(0, RepConvNet), (2, 3, 29, 30)),
        "repconv_identity_bn": (seeded(1, lambda: RepConv(16, 16, identity_bn=True)),
                                (2, 16, 9, 10)),
    }
