"""Diverse Branch Block (Ding et al., "Diverse Branch Block: Building a Convolution as an
Inception-like Unit", CVPR 2021).

A DBB replaces a ``k x k`` conv+BN by four branches on the same input, summed
(paper Fig. 2):

* ``k x k`` conv + BN;
* ``1 x 1`` conv + BN;
* ``1 x 1`` conv + BN, then ``k x k`` average pooling, then BN;
* ``1 x 1`` conv + BN, then ``k x k`` conv + BN.

The two sequences pad *between* their stages: the intermediate feature map is
padded with the value the BN gives a zero input (its folded bias), not with
zeros ("BN and pad"), so that the zero padding of the input of the merged
``k x k`` conv reproduces it exactly; the second stage then pads nothing.
With groups, every conv of the block has the same groups. A depthwise DBB
(groups = channels) has no ``1 x 1`` branch, its average pooling works on the
input directly (with zero padding counted in the average), and the inner
width of the ``1x1 -> kxk`` sequence is twice the input width.

Deploy conversion (paper Sec. 3.2, transforms I-VI): fold each BN into the
conv before it (I); the ``1x1 -> kxk`` sequence becomes one ``k x k`` kernel
``W = W2 * W1^T`` per group, with bias ``sum(W2) b1 + b2`` (III); average
pooling is a ``k x k`` conv with weights ``1/k^2`` on each channel (V); the
``1 x 1`` kernel is zero padded to ``k x k`` (VI); the four kernels and biases
add (II). One ``k x k`` conv per DBB.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import (ConvBN, centre_pad, conv_bn_wb, conv_wb, convert_modules, count_convs, fold_bn,
               identity_kernel, make_conv, seeded)


class BNAndPad(nn.Module):
    """BatchNorm, then a border of ``pad`` pixels holding what the BN maps 0 to.

    Written as ``bn(zero_pad(x))``: in eval mode the BN is a per-channel affine
    map, so the zeros of the border come out as exactly the value the BN gives
    a zero input, i.e. the paper's "pad with the BN's bias". (Filling the border
    of ``bn(x)`` by item assignment, the other way to write it, cannot be traced
    by torch.fx: a Proxy supports no item assignment.)
    """

    def __init__(self, channels, pad):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.pad = pad

    def forward(self, x):
        if self.pad:
            x = F.pad(x, [self.pad] * 4)
        return self.bn(x)


class DiverseBranchBlock(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__()
        p = k // 2
        self.k, self.stride, self.groups = k, stride, groups
        self.depthwise = groups == cout == cin
        self.kxk = ConvBN(cin, cout, k, stride, p, groups)
        if self.depthwise:
            self.one = None
            self.avg = nn.Sequential(nn.AvgPool2d(k, stride, p), nn.BatchNorm2d(cout))
        else:
            self.one = ConvBN(cin, cout, 1, stride, 0, groups)
            self.avg = nn.Sequential(nn.Conv2d(cin, cout, 1, groups=groups, bias=False),
                                     BNAndPad(cout, p), nn.AvgPool2d(k, stride, 0),
                                     nn.BatchNorm2d(cout))
        mid = 2 * cin if self.depthwise else cin
        self.seq = nn.Sequential(nn.Conv2d(cin, mid, 1, groups=groups, bias=False),
                                 BNAndPad(mid, p),
                                 nn.Conv2d(mid, cout, k, stride, 0, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.kxk(x)
        if self.one is not None:
            out = out + self.one(x)
        return out + self.avg(x) + self.seq(x)


class DBBNet(nn.Module):
    """DBB + ReLU layers, ``(cin, cout, stride, groups)``: dense, strided, grouped
    (strided g2, g4), depthwise."""

    SPEC = [(3, 16, 2, 1), (16, 16, 1, 1), (16, 32, 2, 2), (32, 32, 1, 4), (32, 32, 1, 32)]

    def __init__(self, spec=None):
        super().__init__()
        layers = []
        for cin, cout, s, g in spec or self.SPEC:
            layers += [DiverseBranchBlock(cin, cout, 3, s, g), nn.ReLU()]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


def compose_1x1_kxk(w1, b1, w2, groups):
    """Transform III: ``conv_{w2}(conv_{w1,b1}(x))`` (1x1 then kxk, bias-free kxk, same
    groups) as one kernel, per group ``W[o, i] = sum_m W2[o, m] W1[m, i]``."""
    mid_g, cout_g = w1.shape[0] // groups, w2.shape[0] // groups
    ws, bs = [], []
    for g in range(groups):
        a = w1[g * mid_g:(g + 1) * mid_g, :, 0, 0]                  # (mid_g, cin_g)
        c = w2[g * cout_g:(g + 1) * cout_g]                          # (cout_g, mid_g, k, k)
        ws.append(torch.einsum("omhw,mi->oihw", c, a))
        bs.append(torch.einsum("omhw,m->o", c, b1[g * mid_g:(g + 1) * mid_g]))
    return torch.cat(ws), torch.cat(bs)


def avg_kernel(channels, k):
    """Transform V: ``k x k`` average pooling as a depthwise kernel of ``1/k^2``."""
    return identity_kernel(channels, channels, 1).expand(-1, -1, k, k) / (k * k)


def convert_block(block: DiverseBranchBlock) -> nn.Module:
    k, g = block.k, block.groups
    w, b = conv_bn_wb(block.kxk.conv, block.kxk.bn)
    if block.one is not None:
        w1, b1 = conv_bn_wb(block.one.conv, block.one.bn)
        w, b = w + centre_pad(w1, k), b + b1
    if block.depthwise:
        pool, bn = block.avg
        wa = avg_kernel(w.shape[0], k)
        wa, ba = fold_bn(wa, torch.zeros(w.shape[0], dtype=torch.float64), bn)
    else:
        conv1, bnpad, pool, bn = block.avg
        wc, bc = conv_wb(conv1)
        wc, bc = fold_bn(wc, bc, bnpad.bn)
        # averaging a 1x1 conv's output: the 1x1 kernel spread over k x k, divided by k^2;
        # the border holds bc, so the average of a constant bc stays bc everywhere
        wa, ba = wc.expand(-1, -1, k, k) / (k * k), bc
        wa, ba = fold_bn(wa, ba, bn)
    w, b = w + wa, b + ba
    conv1, bnpad, conv2, bn2 = block.seq
    wc, bc = fold_bn(*conv_wb(conv1), bnpad.bn)
    ws, bs = compose_1x1_kxk(wc, bc, conv_wb(conv2)[0], g)
    ws, bs = fold_bn(ws, bs, bn2)
    w, b = w + ws, b + bs
    return make_conv(w, b, stride=block.stride, padding=k // 2, groups=g,
                     like=block.kxk.conv.weight)


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(DiverseBranchBlock, convert_block)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(DiverseBranchBlock, 1)])


def cases():
    return {
        "net": (seeded(0, DBBNet), (2, 3, 27, 30)),
        "block_s1": (seeded(1, lambda: DiverseBranchBlock(8, 8, 3, 1, 1)), (2, 8, 9, 10)),
        "block_depthwise": (seeded(2, lambda: DiverseBranchBlock(8, 8, 3, 1, 8)),
                            (2, 8, 9, 10)),
        "block_k5_s2_g2": (seeded(3, lambda: DiverseBranchBlock(8, 12, 5, 2, 2)),
                           (2, 8, 13, 12)),
    }

