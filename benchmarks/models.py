"""The models the benchmarks run: RepGhostNet at every width, the test-zoo families,
and a RepVGG-like network of any depth and width for the fusing-cost sweep.

Every benchmarked model comes as ``(training, deploy, input_hw)``: the eval-mode
training form with randomized BatchNorm statistics, its hand-written deploy form
(the per-class conversion: ``convert_to_deploy`` for RepGhostNet, each zoo
family's ``deploy_convert``), and the input resolution. Where a deploy form
keeps conv+BN pairs (RepGhostNet's release leaves them for a compiler), they
are folded by ``torch.fx.experimental.optimization.fuse``, so the baseline has
no BatchNorm left either.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import zlib

import torch
from torch import nn

from common import add_paths

add_paths()

#: the zoo family modules benchmarked (``tests/zoo/<name>.py``)
ZOO = ("repvgg", "acnet", "dbb", "mobileone", "repvit", "qarepvgg", "replknet",
       "yolo_repconv", "fastvit")
ZOO_TITLES = {"repvgg": "RepVGG", "acnet": "ACNet", "dbb": "DBB", "mobileone": "MobileOne",
              "repvit": "RepViT", "qarepvgg": "QARepVGG", "replknet": "RepLKNet",
              "yolo_repconv": "YOLO RepConv", "fastvit": "FastViT"}


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_leftover_bn(model: nn.Module) -> nn.Module:
    """``model`` with its conv+BN pairs folded by torch.fx's own pass (if any are left)."""
    if not _bns(model):
        return model
    from torch.fx.experimental.optimization import fuse

    return fuse(model).eval()


def repghostnet(width: float):
    from reparam.models import convert_to_deploy, randomize_bn_, repghostnet as build

    torch.manual_seed(0)
    training = randomize_bn_(build(width), torch.Generator().manual_seed(0)).eval()
    return training, fold_leftover_bn(convert_to_deploy(training).eval()), 224


def zoo_family(name: str):
    mod = importlib.import_module(f"zoo.{name}")
    from reparam.models import randomize_bn_

    training, _ = mod.cases()["net"]
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    training = randomize_bn_(training, gen).eval()
    return training, fold_leftover_bn(mod.deploy_convert(training).eval()), 224


def catalogue(widths=None, families=None) -> dict:
    """``{title: builder}`` of the benchmarked models, RepGhostNet widths first."""
    from reparam.models import WIDTHS

    out = {}
    for w in (WIDTHS if widths is None else widths):
        out[f"RepGhostNet-{w}x"] = (lambda w=w: repghostnet(w))
    for f in (ZOO if families is None else families):
        out[ZOO_TITLES[f]] = (lambda f=f: zoo_family(f))
    return out


# --- float32 hand-written conversions (for the numerical-error comparison) -------------------

class _TorchF32:
    """``torch`` with ``float64`` meaning ``float32``: the zoo's conversions run in float32."""

    float64 = torch.float32
    double = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def _float32_zoo():
    import zoo

    mods = [zoo] + [importlib.import_module(f"zoo.{n}") for n in ZOO]
    saved = [(m, m.torch) for m in mods if hasattr(m, "torch")]
    saved_f64 = zoo.f64
    try:
        for m, _ in saved:
            m.torch = _TorchF32()
        zoo.f64 = lambda t: t.detach().to("cpu", torch.float32).clone()
        yield
    finally:
        for m, t in saved:
            m.torch = t
        zoo.f64 = saved_f64


def _repghost_cheap_f32(module):
    """RepGhost's cheap-path fusion as the official release computes it: in float32."""
    conv, bn = module.cheap_operation
    std = torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * (bn.weight / std).view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * bn.weight / std
    centre = conv.kernel_size[0] // 2
    weight = weight.clone()
    for branch in module.fusion_bn:
        if isinstance(branch, nn.BatchNorm2d):
            s = branch.weight / torch.sqrt(branch.running_var + branch.eps)
            weight[:, 0, centre, centre] += s
            bias = bias + branch.bias - branch.running_mean * s
        else:
            weight[:, 0, centre, centre] += 1
    return weight, bias


def handwritten_f32(title: str, training: nn.Module) -> nn.Module:
    """The per-class deploy conversion of ``training`` with its arithmetic in float32."""
    with torch.no_grad():
        if title.startswith("RepGhostNet"):
            from reparam.models import repghost

            saved = repghost._fused_cheap_operation
            repghost._fused_cheap_operation = _repghost_cheap_f32
            try:
                deploy = repghost.convert_to_deploy(training).eval()
            finally:
                repghost._fused_cheap_operation = saved
            return fold_leftover_bn(deploy)
        family = next(k for k, v in ZOO_TITLES.items() if v == title)
        mod = importlib.import_module(f"zoo.{family}")
        with _float32_zoo():
            deploy = mod.deploy_convert(training).eval()
        return fold_leftover_bn(deploy)


# --- the scalable RepVGG-like network of the cost sweep ---------------------------------------

class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class RepVGGLikeBlock(nn.Module):
    """``ReLU(BN(conv3x3 x) + BN(conv1x1 x) + BN(x))`` (identity-BN when channels match)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.dense = ConvBN(cin, cout, 3)
        self.pointwise = ConvBN(cin, cout, 1)
        self.skip = nn.BatchNorm2d(cout) if cin == cout else None
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.dense(x) + self.pointwise(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return self.act(y)


def repvgg_like(width: int, depth: int) -> nn.Module:
    """``depth`` blocks of ``width`` channels (the first from 3); about ``10 width^2`` a block."""
    torch.manual_seed(0)
    with torch.no_grad():
        model = nn.Sequential(*(RepVGGLikeBlock(3 if i == 0 else width, width)
                                for i in range(depth)))
        from reparam.models import randomize_bn_

        return randomize_bn_(model, torch.Generator().manual_seed(0)).eval()


def repvgg_like_params(width: int, depth: int) -> int:
    first = 3 * width * 10 + 4 * width
    rest = width * width * 10 + 6 * width
    return first + (depth - 1) * rest


#: the cost sweep, small to large: (width, depth); the last one has >= 100 M parameters
COST_SIZES = [(32, 4), (64, 4), (128, 4), (256, 4), (256, 16), (512, 8), (512, 16), (768, 16),
              (1024, 11)]
QUICK_COST_SIZES = [(16, 2), (32, 3)]


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
