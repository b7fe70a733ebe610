"""FastViT (Vasu et al., "FastViT: A Fast Hybrid Vision Transformer using Structural
Reparameterization", ICCV 2023).

* MobileOne blocks (conv+BN branches, 1x1 scale branch, skip BN; GELU) in the
  stem: dense 3x3 s2, depthwise 3x3 s2, pointwise 1x1.
* RepMixer (paper Sec. 3.2.1), in its training form
  ``x + layer_scale * (mixer(x) - norm(x))``: ``mixer`` a depthwise MobileOne
  block without activation (kxk conv+BN, 1x1 conv+BN, skip BN), ``norm`` a BN
  (a MobileOne block with only its skip BN), ``layer_scale`` a learnable
  per-channel ``(C, 1, 1)`` tensor. A RepMixer block follows it with a
  ConvFFN (dw 7x7 conv+BN, 1x1, GELU, 1x1) under its own layer scale:
  ``x + layer_scale * ffn(x)``.
* Patch embedding: a re-parameterized large kernel (7x7 conv+BN beside a
  3x3 conv+BN, stride 2, groups = input channels, GELU after the sum),
  then a pointwise MobileOne block.
* Conditional positional encoding (RepCPE): ``x + dwconv7x7(x)``, a
  depthwise conv with bias.

Deploy conversion (the authors'): a MobileOne block becomes one conv (BNs
folded, 1x1 padded, skip BN as a centre kernel, summed); RepMixer becomes one
depthwise kxk conv ``W = I + layer_scale * (W_mixer - W_norm)``, ``b =
layer_scale * (b_mixer - b_norm)``; the large kernel adds its padded small
kernel; RepCPE adds the identity to its kernel; the ConvFFN's conv+BN folds.
The FFN's layer scale stays a multiplication (it is after a nonlinearity's
1x1 conv and the authors leave it).
"""
from __future__ import annotations

import torch
from torch import nn

from . import (bn_kernel, centre_pad, conv_bn_wb, conv_wb, convert_modules, count_convs,
               identity_kernel, make_conv, seeded)


class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                                          bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class MobileOneBlock(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, use_act=True, use_scale_branch=True,
                 num_conv_branches=1):
        super().__init__()
        self.k, self.stride, self.groups = k, stride, groups
        self.rbr_skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_conv = nn.ModuleList(ConvBN(cin, cout, k, stride, groups)
                                      for _ in range(num_conv_branches))
        self.rbr_scale = (ConvBN(cin, cout, 1, stride, groups)
                          if k > 1 and use_scale_branch else None)
        self.act = nn.GELU() if use_act else nn.Identity()

    def forward(self, x):
        outs = []
        if self.rbr_skip is not None:
            outs.append(self.rbr_skip(x))
        if self.rbr_scale is not None:
            outs.append(self.rbr_scale(x))
        outs += [branch(x) for branch in self.rbr_conv]
        out = outs[0]
        for o in outs[1:]:
            out = out + o
        return self.act(out)


class RepMixer(nn.Module):
    def __init__(self, dim, k=3, layer_scale_init=1e-5):
        super().__init__()
        self.dim, self.k = dim, k
        self.norm = MobileOneBlock(dim, dim, k, 1, dim, use_act=False, use_scale_branch=False,
                                   num_conv_branches=0)
        self.mixer = MobileOneBlock(dim, dim, k, 1, dim, use_act=False)
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x):
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))


class ConvFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.conv = ConvBN(dim, dim, 7, 1, dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=3, layer_scale_init=1e-5):
        super().__init__()
        self.token_mixer = RepMixer(dim, 3, layer_scale_init)
        self.convffn = ConvFFN(dim, mlp_ratio * dim)
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x):
        x = self.token_mixer(x)
        return x + self.layer_scale * self.convffn(x)


class ReparamLargeKernelConv(nn.Module):
    def __init__(self, cin, cout, k, stride, groups, small_kernel):
        super().__init__()
        self.k, self.stride, self.groups = k, stride, groups
        self.lkb_origin = ConvBN(cin, cout, k, stride, groups)
        self.small_conv = ConvBN(cin, cout, small_kernel, stride, groups)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.lkb_origin(x) + self.small_conv(x))


class RepCPE(nn.Module):
    def __init__(self, dim, k=7):
        super().__init__()
        self.pe = nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim, bias=True)

    def forward(self, x):
        return x + self.pe(x)


class FastViTNet(nn.Module):
    def __init__(self, c1=16, c2=32):
        super().__init__()
        self.stem = nn.Sequential(MobileOneBlock(3, c1, 3, 2),
                                  MobileOneBlock(c1, c1, 3, 2, c1),
                                  MobileOneBlock(c1, c1, 1, 1))
        self.stage1 = RepMixerBlock(c1)
        self.patch_embed = nn.Sequential(ReparamLargeKernelConv(c1, c2, 7, 2, c1, 3),
                                         MobileOneBlock(c2, c2, 1, 1))
        self.pos_emb = RepCPE(c2)
        self.stage2 = RepMixerBlock(c2)

    def forward(self, x):
        x = self.patch_embed(self.stage1(self.stem(x)))
        return self.stage2(self.pos_emb(x))


def randomize_layer_scales_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every layer scale random values in [-1.5, -0.5] U [0.5, 1.5] (the 1e-5 init
    would make each scaled branch all but vanish and hide folding mistakes)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] == "layer_scale":
                mag = 0.5 + torch.rand(p.shape, generator=generator, dtype=torch.float64)
                sign = torch.where(torch.rand(p.shape, generator=generator) < 0.5, -1.0, 1.0)
                p.copy_(mag * sign)
    return model


def mobileone_kernel(m: MobileOneBlock):
    """(w, b) of a MobileOne block's branch sum, in float64."""
    k, g = m.k, m.groups
    kernels = [conv_bn_wb(b.conv, b.bn) for b in m.rbr_conv]
    if m.rbr_scale is not None:
        w1, b1 = conv_bn_wb(m.rbr_scale.conv, m.rbr_scale.bn)
        kernels.append((centre_pad(w1, k), b1))
    if m.rbr_skip is not None:
        kernels.append(bn_kernel(m.rbr_skip, g, k))
    return sum(w for w, _ in kernels), sum(b for _, b in kernels)


def _like(m: nn.Module) -> torch.Tensor:
    return next(t for t in m.state_dict().values() if t.is_floating_point())


def convert_mobileone(m: MobileOneBlock) -> nn.Module:
    w, b = mobileone_kernel(m)
    conv = make_conv(w, b, stride=m.stride, padding=m.k // 2, groups=m.groups, like=_like(m))
    return nn.Sequential(conv, m.act)


def convert_repmixer(m: RepMixer) -> nn.Module:
    wm, bm = mobileone_kernel(m.mixer)
    wn, bn = mobileone_kernel(m.norm)
    ls = m.layer_scale.detach().to(torch.float64).reshape(-1)
    w = identity_kernel(m.dim, m.dim, m.k) + ls.view(-1, 1, 1, 1) * (wm - wn)
    return make_conv(w, ls * (bm - bn), stride=1, padding=m.k // 2, groups=m.dim,
                     like=m.layer_scale)


def convert_large_kernel(m: ReparamLargeKernelConv) -> nn.Module:
    w, b = conv_bn_wb(m.lkb_origin.conv, m.lkb_origin.bn)
    ws, bs = conv_bn_wb(m.small_conv.conv, m.small_conv.bn)
    conv = make_conv(w + centre_pad(ws, m.k), b + bs, stride=m.stride, padding=m.k // 2,
                     groups=m.groups, like=m.lkb_origin.conv.weight)
    return nn.Sequential(conv, m.act)


def convert_cpe(m: RepCPE) -> nn.Module:
    w, b = conv_wb(m.pe)
    dim, k = w.shape[0], w.shape[-1]
    return make_conv(w + identity_kernel(dim, dim, k), b, stride=1, padding=k // 2,
                     groups=dim, like=m.pe.weight)


def convert_conv_bn(m: ConvBN) -> nn.Module:
    c = m.conv
    return make_conv(*conv_bn_wb(c, m.bn), stride=c.stride, padding=c.padding, groups=c.groups,
                     like=c.weight)


def deploy_convert(model: nn.Module) -> nn.Module:
    return convert_modules(model, [(RepMixer, convert_repmixer),
                                   (MobileOneBlock, convert_mobileone),
                                   (ReparamLargeKernelConv, convert_large_kernel),
                                   (RepCPE, convert_cpe), (ConvBN, convert_conv_bn)])


def deploy_conv_count(model: nn.Module) -> int:
    return count_convs(model, [(RepMixer, 1), (MobileOneBlock, 1), (ReparamLargeKernelConv, 1),
                               (RepCPE, 1), (ConvBN, 1)])


def _build(make, seed):
    return randomize_layer_scales_(seeded(seed, make), torch.Generator().manual_seed(seed))


def cases():
    return {
        "net": (_build(FastViTNet, 0), (2, 3, 30, 29)),
        "repmixer": (_build(lambda: RepMixer(16), 1), (2, 16, 9, 10)),
        "cpe": (_build(lambda: RepCPE(16), 2), (2, 16, 9, 10)),
    }
