"""RepGhostNet (Chen et al., "RepGhost: A Hardware-Efficient Ghost Module via
Re-parameterization", 2022), training-time and inference-time forms.

Paper structure implemented here:

* RepGhost module (Fig. 3d): a 1x1 conv + BN (+ ReLU) produces ``y``; a
  depthwise 3x3 conv + BN on ``y`` is summed with a BN-only branch on the same
  ``y``; the ReLU (if any) comes after the sum.  Every operator between ``y``
  and the sum is linear in eval mode, so the module folds into Fig. 3e: 1x1
  conv + BN (+ ReLU), then a single depthwise 3x3 conv with bias.  The
  alternatives of the ablation (Table 6) are selected with ``reparam``:
  ``'bn'`` (default, Fig. 3d), ``'identity'`` (bare identity branch, Fig. 3c)
  and ``None`` (no extra branch, Fig. 3e-like already during training).
* RepGhost bottleneck (Fig. 4b): RepGhost module with ReLU -> (depthwise
  kxk conv + BN with stride 2 when downsampling) -> (SE block) -> RepGhost
  module without ReLU, plus a shortcut: identity when the shape is kept,
  otherwise depthwise kxk conv + BN -> 1x1 conv + BN.
* RepGhostNet (Table 2): 3x3 stride-2 stem conv + BN + ReLU, 16 bottlenecks,
  1x1 conv + BN + ReLU to 960 channels, global average pooling, 1x1 conv (with
  bias) to 1280 channels + ReLU, dropout and a linear classifier.  Channels are
  scaled by the width multiplier and rounded to multiples of 4.

Module names, nesting, channel rounding and kernel sizes (3 or 5, not listed in
Table 2) follow the official release (github.com/ChengpengChen/RepGhost,
``model/repghost.py``) so that its ImageNet checkpoints load with
``strict=True``, both training-form and converted (deploy) ones.  In the deploy
form, as in the release, only the cheap path of each RepGhost module is fused;
the remaining conv + BN pairs are left for a generic compiler.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "WIDTHS",
    "REPARAM_VARIANTS",
    "SqueezeExcite",
    "ConvBnAct",
    "RepGhostModule",
    "RepGhostBottleneck",
    "RepGhostNet",
    "repghostnet",
    "convert_to_deploy",
    "randomize_bn_",
]

WIDTHS = (0.5, 0.58, 0.8, 1.0, 1.11, 1.3, 1.5, 2.0)
REPARAM_VARIANTS = ("bn", "identity", None)

# Table 2 rows as (kernel, mid, out, se, stride), grouped into the stages
# `blocks.<i>` exactly as the release groups them.
STAGES = (
    ((3, 8, 16, False, 1),),
    ((3, 24, 24, False, 2),),
    ((3, 36, 24, False, 1),),
    ((5, 36, 40, True, 2),),
    ((5, 60, 40, True, 1),),
    ((3, 120, 80, False, 2),),
    (
        (3, 100, 80, False, 1),
        (3, 120, 80, False, 1),
        (3, 120, 80, False, 1),
        (3, 240, 112, True, 1),
        (3, 336, 112, True, 1),
    ),
    ((5, 336, 160, True, 2),),
    (
        (5, 480, 160, False, 1),
        (5, 480, 160, True, 1),
        (5, 480, 160, False, 1),
        (5, 480, 160, True, 1),
    ),
)
STEM_CHANNELS = 16
HEAD_CHANNELS = 1280


def _make_divisible(value, divisor=4):
    """Round ``value`` to the nearest multiple of ``divisor`` (at least
    ``divisor``), bumping up one step if that loses more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """SE block: channel gate hard_sigmoid(conv(relu(conv(avgpool(x)))))."""

    def __init__(self, channels, ratio=0.25):
        super().__init__()
        reduced = _make_divisible(channels * ratio)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x):
        gate = self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x))))
        return x * F.hardsigmoid(gate)


class ConvBnAct(nn.Module):
    """Conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_chs, out_chs, kernel_size, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU()

    def forward(self, x):
        return self.act1(self.bn1(self.conv(x)))


class RepGhostModule(nn.Module):
    """RepGhost module (Fig. 3d training form, Fig. 3e when ``deploy``).

    ``fusion_conv[i]`` / ``fusion_bn[i]`` form the i-th re-parameterization
    branch on the primary output; the conv slot is always an identity (it is
    kept because the release structures the branch this way).
    """

    def __init__(self, in_chs, out_chs, relu=True, reparam="bn", deploy=False):
        super().__init__()
        if reparam not in REPARAM_VARIANTS:
            raise ValueError(f"reparam must be one of {REPARAM_VARIANTS}, got {reparam!r}")
        primary = [nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs)]
        self.primary_conv = nn.Sequential(*primary, *([nn.ReLU()] if relu else []))

        branches = []
        if not deploy and reparam == "bn":
            branches = [nn.BatchNorm2d(out_chs)]
        elif not deploy and reparam == "identity":
            branches = [nn.Identity()]
        self.fusion_conv = nn.Sequential(*(nn.Identity() for _ in branches))
        self.fusion_bn = nn.Sequential(*branches)

        depthwise = nn.Conv2d(out_chs, out_chs, 3, 1, 1, groups=out_chs, bias=deploy)
        self.cheap_operation = depthwise if deploy else nn.Sequential(depthwise, nn.BatchNorm2d(out_chs))
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x):
        y = self.primary_conv(x)
        out = self.cheap_operation(y)
        for conv, bn in zip(self.fusion_conv, self.fusion_bn):
            out = out + bn(conv(y))
        return self.relu(out)


class RepGhostBottleneck(nn.Module):
    """RepGhost bottleneck (Fig. 4b); ``conv_dw``/``bn_dw`` exist only for
    stride 2 and ``se`` only when the stage table asks for it (else None)."""

    def __init__(self, in_chs, mid_chs, out_chs, kernel_size=3, stride=1, se=False, reparam="bn", deploy=False):
        super().__init__()
        self.ghost1 = RepGhostModule(in_chs, mid_chs, relu=True, reparam=reparam, deploy=deploy)
        if stride > 1:
            self.conv_dw = nn.Conv2d(
                mid_chs, mid_chs, kernel_size, stride, kernel_size // 2, groups=mid_chs, bias=False
            )
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = SqueezeExcite(mid_chs) if se else None
        self.ghost2 = RepGhostModule(mid_chs, out_chs, relu=False, reparam=reparam, deploy=deploy)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, kernel_size, stride, kernel_size // 2, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x):
        y = self.ghost1(x)
        if self.conv_dw is not None:
            y = self.bn_dw(self.conv_dw(y))
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)


class RepGhostNet(nn.Module):
    """RepGhostNet of Table 2 scaled by ``width``.

    ``reparam`` picks the re-parameterization branch of every RepGhost module
    (``'bn'``, ``'identity'`` or ``None``); ``deploy=True`` builds the fused
    inference form (``reparam`` is then irrelevant).
    """

    def __init__(self, width=1.0, reparam="bn", deploy=False, num_classes=1000, dropout=0.2):
        super().__init__()
        if reparam not in REPARAM_VARIANTS:
            raise ValueError(f"reparam must be one of {REPARAM_VARIANTS}, got {reparam!r}")
        self.width = width
        self.reparam = reparam
        self.deploy = deploy
        self.num_classes = num_classes

        channels = _make_divisible(STEM_CHANNELS * width)
        self.conv_stem = nn.Conv2d(3, channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU()

        stages = []
        for rows in STAGES:
            blocks = []
            for kernel_size, mid, out, se, stride in rows:
                out_chs = _make_divisible(out * width)
                blocks.append(
                    RepGhostBottleneck(
                        channels, _make_divisible(mid * width), out_chs, kernel_size, stride, se, reparam, deploy
                    )
                )
                channels = out_chs
            stages.append(nn.Sequential(*blocks))
        last_mid = STAGES[-1][-1][1]
        head_in = _make_divisible(last_mid * 2 * width)
        stages.append(nn.Sequential(ConvBnAct(channels, head_in, 1)))
        self.blocks = nn.Sequential(*stages)

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(head_in, HEAD_CHANNELS, 1, bias=True)
        self.act2 = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x):
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.conv_head(self.global_pool(x)))
        return self.classifier(self.drop(torch.flatten(x, 1)))


def repghostnet(width=1.0, reparam="bn", deploy=False, num_classes=1000, dropout=0.2):
    """RepGhostNet at one of the published widths (``WIDTHS``)."""
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {WIDTHS}, got {width!r}")
    return RepGhostNet(width=width, reparam=reparam, deploy=deploy, num_classes=num_classes, dropout=dropout)


def _bn_as_affine(bn):
    """(scale, shift) in float64 such that eval-mode ``bn(x) == scale * x + shift`` per channel."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _fused_cheap_operation(module):
    """Weight and bias of the single depthwise conv equal (in eval mode) to the
    cheap path of ``module``: depthwise conv + BN, plus every fusion branch."""
    conv, bn = module.cheap_operation
    scale, shift = _bn_as_affine(bn)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = shift
    # A per-channel affine map of the depthwise conv's input is a depthwise 1x1
    # conv, i.e. a contribution to the centre tap of the 3x3 kernel.
    centre = conv.kernel_size[0] // 2
    for branch in module.fusion_bn:
        if isinstance(branch, nn.BatchNorm2d):
            branch_scale, branch_shift = _bn_as_affine(branch)
        else:
            branch_scale, branch_shift = torch.ones_like(bias), torch.zeros_like(bias)
        weight[:, 0, centre, centre] += branch_scale
        bias = bias + branch_shift
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


@torch.no_grad()
def convert_to_deploy(model):
    """Return a new deploy-form ``RepGhostNet`` computing, in eval mode, the
    same function as the training-form ``model`` (which is left untouched).

    Each RepGhost module's cheap path is folded (in float64) into one
    depthwise conv with bias; all other tensors are copied unchanged.
    """
    if model.deploy:
        raise ValueError("model is already in deploy form")
    reference = next(model.parameters())
    deployed = RepGhostNet(
        width=model.width, deploy=True, num_classes=model.num_classes, dropout=model.drop.p
    ).to(device=reference.device, dtype=reference.dtype)

    state = {key: value.clone() for key, value in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, RepGhostModule):
            prefix = f"{name}."
            for key in list(state):
                if key.startswith((prefix + "cheap_operation.", prefix + "fusion_bn.")):
                    del state[key]
            weight, bias = _fused_cheap_operation(module)
            state[prefix + "cheap_operation.weight"] = weight
            state[prefix + "cheap_operation.bias"] = bias
    deployed.load_state_dict(state, strict=True)
    return deployed.train(model.training)


@torch.no_grad()
def randomize_bn_(model, generator=None):
    """Randomize, in place, every BatchNorm layer of ``model`` and return it.

    running_mean ~ N(0, 1), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5),
    bias ~ 0.1 * N(0, 1).  A freshly initialised BN is (nearly) the identity
    in eval mode, which would hide BN-folding mistakes; after this call every
    BN is a distinct, non-trivial per-channel affine map.  Values are drawn on
    the CPU from ``generator`` (a ``torch.Generator``; the global RNG if None)
    and copied into the existing tensors, keeping their dtype and device.
    """

    def draw(shape, low=None, high=None):
        if low is None:
            return torch.randn(shape, generator=generator, dtype=torch.float64)
        return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)

    for module in model.modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        shape = (module.num_features,)
        if module.running_mean is not None:
            module.running_mean.copy_(draw(shape))
            module.running_var.copy_(draw(shape, 0.5, 2.0))
        if module.weight is not None:
            module.weight.copy_(draw(shape, 0.5, 1.5))
            module.bias.copy_(0.1 * draw(shape))
    return model
