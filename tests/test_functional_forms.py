"""Functional and subclassed spellings lift like their module forms (issue 13): F.conv*d,
F.batch_norm with stored statistics, F.avg_pool*d, F.linear / nn.Linear on (N, C), metadata
reads such as ``torch._assert(x.ndim == 4)``, BatchNorm subclasses traced through."""
import copy
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reparam
from reparam.models import randomize_bn_

torch.set_num_threads(1)
TOL = 1e-9
X = torch.randn(2, 6, 9, 10, dtype=torch.float64)


def bn(c, cls=nn.BatchNorm2d):
    return randomize_bn_(cls(c))


def fuse_same(model, x, **kw):
    reference = copy.deepcopy(model)
    fused, report = reparam.fuse(model, report=True, **kw)
    with torch.no_grad():
        ref, got = reference(x), fused(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= TOL, report.details()
    return fused, report


def count(gm, *targets):
    """Calls in the fused GraphModule of modules of these classes / of these functions."""
    classes = tuple(t for t in targets if isinstance(t, type))
    n = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), classes):
            n += 1
        elif node.op == "call_function" and node.target in targets:
            n += 1
    return n


class FunctionalConvBN(nn.Module):
    """Conv and BatchNorm written with F.* on the module's own parameters and buffers."""

    def __init__(self, c=6):
        super().__init__()
        self.w3 = nn.Parameter(torch.randn(c, c, 3, 3) / 9)
        self.w1 = nn.Parameter(torch.randn(c, c, 1, 1) / 3)
        self.b1 = nn.Parameter(torch.randn(c))
        self.n3, self.n1 = bn(c), bn(c)

    def norm(self, x, n):
        return F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, False, 0.1, n.eps)

    def forward(self, x):
        a = self.norm(F.conv2d(x, self.w3, padding=1), self.n3)
        b = self.norm(F.conv2d(x, self.w1, self.b1, stride=1, padding="same"), self.n1)
        return torch.relu(a + b + F.avg_pool2d(x, 3, 1, 1))


def test_functional_conv_batchnorm_and_pool_merge_into_one_conv():
    fused, report = fuse_same(FunctionalConvBN().double().eval(), X, example_inputs=X)
    assert count(fused, nn.Conv2d) == 1
    assert count(fused, F.batch_norm, F.conv2d, F.avg_pool2d, nn.BatchNorm2d) == 0
    assert report.fired["merge_parallel_branches"] == 1


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm + activation in one subclass, checking its input's rank first (the way timm's
    BatchNormAct2d is written), defined outside torch.nn: torch.fx traces through it."""

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, 0.0 if self.momentum is None else self.momentum, self.eps)
        return F.relu(x, inplace=True)


def test_batchnorm_subclass_traced_through_folds_and_keeps_its_activation():
    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), randomize_bn_(BatchNormAct(6)),
                          nn.Conv2d(6, 6, 1), randomize_bn_(BatchNormAct(6))).double().eval()
    fused, report = fuse_same(model, X)
    assert count(fused, nn.Conv2d) == 2 and count(fused, F.batch_norm) == 0
    assert count(fused, F.relu) == 2  # the activations stay
    assert report.fired["fold_conv_bn"] == 2


@pytest.mark.parametrize("read", [
    lambda y: torch._assert(y.ndim == 4, "rank"),
    lambda y: torch._assert(y.shape[1] == 6, "channels"),
    lambda y: (torch._assert(y.size(1) == 6, "size"), torch._assert(y.dim() == 4, "dim")),
    lambda y: (torch._assert(y.dtype == torch.float64, "dtype"),
               torch._assert(y.device.type == "cpu", "device")),
], ids=["ndim", "shape", "size-dim", "dtype-device"])
def test_metadata_reads_do_not_block_a_fold(read):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(6, 6, 3, padding=1), bn(6)

        def forward(self, x):
            y = self.conv(x)
            read(y)
            return self.bn(y)

    fused, report = fuse_same(M().double().eval(), X)
    assert report.fired["fold_conv_bn"] == 1 and count(fused, nn.BatchNorm2d) == 0


def test_shape_read_of_an_intermediate_of_another_shape_blocks_the_fold():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(6, 4, 1), nn.Conv2d(4, 6, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) * y.shape[1]  # the composed conv has 6 channels, not 4

    fused, report = fuse_same(M().double().eval(), X)
    assert count(fused, nn.Conv2d) == 2
    assert any(r.kind == "shared" and "metadata" in r.reason for r in report.refused)


@pytest.mark.parametrize("first", ["linear_bn", "bn_linear"])
def test_linear_and_batchnorm1d_fold(first):
    lin = nn.Linear(8, 5)
    model = (nn.Sequential(lin, bn(5, nn.BatchNorm1d)) if first == "linear_bn" else
             nn.Sequential(bn(8, nn.BatchNorm1d), lin)).double().eval()
    x = torch.randn(4, 8, dtype=torch.float64)
    fused, report = fuse_same(model, x, example_inputs=x)
    assert count(fused, nn.Linear) == 1 and count(fused, nn.BatchNorm1d) == 0


def test_distillation_head_becomes_one_linear():
    """RepViT's classifier: (BN1d + Linear) twice on the pooled features, averaged."""

    class Head(nn.Module):
        def __init__(self, c=8, k=5):
            super().__init__()
            self.head = nn.Sequential(bn(c, nn.BatchNorm1d), nn.Linear(c, k))
            self.head_dist = nn.Sequential(bn(c, nn.BatchNorm1d), nn.Linear(c, k))

        def forward(self, x):
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return (self.head(x) + self.head_dist(x)) / 2

    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    fused, report = fuse_same(Head().double().eval(), x, example_inputs=x)
    assert count(fused, nn.Linear) == 1 and count(fused, nn.BatchNorm1d) == 0


def test_functional_linear_and_sum_of_linears():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 8))
            self.a = nn.Linear(8, 5)

        def forward(self, x):
            return F.linear(x, self.w) + self.a(x) * 0.5 - x[:, :5]

    x = torch.randn(4, 8, dtype=torch.float64)
    fused, report = fuse_same(M().double().eval(), x, example_inputs=x)
    assert count(fused, nn.Linear) == 1 and count(fused, F.linear) == 0


def test_linear_on_a_sequence_is_not_a_channel_map():
    """nn.Linear maps the last dimension; on (N, L, C) that is not dimension 1."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).double().eval()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    fused, report = fuse_same(model, x, example_inputs=x)
    assert count(fused, nn.Linear) == 2


def test_sync_batchnorm_in_eval_folds():
    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1),
                          randomize_bn_(nn.SyncBatchNorm(6))).double().eval()
    fused, report = fuse_same(model, X)
    assert count(fused, nn.SyncBatchNorm) == 0 and report.fired["fold_conv_bn"] == 1


def test_functional_batchnorm_without_stored_statistics_stays():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return F.batch_norm(y, y.mean((0, 2, 3)).detach(), y.var((0, 2, 3)).detach())

    fused, report = fuse_same(M().double().eval(), X)
    [k] = [k for k in report.kept if k.op == "torch.nn.functional.batch_norm"]
    assert k.kind == "arguments"


@pytest.mark.parametrize("nd, groups, stride, padding, output_padding", [
    (2, 1, 2, 1, 1), (2, 3, 2, 0, 0), (1, 1, 3, 1, 2), (3, 2, 1, 1, 0)])
def test_conv_transpose_then_batchnorm_folds(nd, groups, stride, padding, output_padding):
    ct = getattr(nn, f"ConvTranspose{nd}d")(6, 6, 3, stride, padding, output_padding, groups)
    norm = bn(6, getattr(nn, f"BatchNorm{nd}d"))
    model = nn.Sequential(ct, norm).double().eval()
    x = torch.randn((2, 6) + (5,) * nd, dtype=torch.float64)
    fused, report = fuse_same(model, x, example_inputs=x)
    assert report.fired["fold_conv_bn"] == 1
    assert count(fused, nn.modules.batchnorm._BatchNorm) == 0
    assert count(fused, nn.modules.conv._ConvTransposeNd) == 1


class MobileOneLike(nn.Module):
    """``out = 0``, then ``out += branch`` (the way timm's MobileOneBlock sums its branches),
    and a layer scale applied through a view of its parameter (timm's LayerScale2d)."""

    def __init__(self, c=6, inplace_after=False):
        super().__init__()
        self.identity = bn(c)
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c))
                                   for _ in range(2))
        self.gamma = nn.Parameter(torch.rand(c, dtype=torch.float64) + 0.5)
        self.inplace_after = inplace_after

    def forward(self, x):
        out = 0
        out += self.identity(x)
        for conv in self.convs:
            out += conv(x)
        y = out * self.gamma.view(1, -1, 1, 1)
        return y.relu_() if self.inplace_after else y


def test_sum_from_zero_and_viewed_layer_scale_fold():
    fused, report = fuse_same(MobileOneLike().double().eval(), X)
    assert count(fused, nn.Conv2d) == 1 and count(fused, nn.BatchNorm2d) == 0
    assert report.fired["drop_noop_affine"] == 1
    assert not any(n.op == "call_method" and n.target == "view" for n in fused.graph.nodes)


def test_noop_affine_whose_result_changes_in_place_stays():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 1)

        def forward(self, x):
            y = x + 0  # a new tensor: relu_ on it must not change x
            y.relu_()
            return self.conv(x) + y

    fused, report = fuse_same(M().double().eval(), X)
    assert report.fired["drop_noop_affine"] == 0


@pytest.mark.parametrize("after", ["layer_scale", "depthwise_1x1", "batchnorm"])
def test_per_channel_affine_after_group_norm_folds_into_it(after):
    """RIFormer / PoolFormer style: GroupNorm(1, C), then a per-channel affine."""
    norm = nn.GroupNorm(1, 6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    tail = {"layer_scale": None, "depthwise_1x1": nn.Conv2d(6, 6, 1, groups=6),
            "batchnorm": bn(6)}[after]

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.tail = norm, tail
            self.scale = nn.Parameter(torch.rand(6, 1, 1) + 0.5)

        def forward(self, x):
            y = self.norm(x)
            return y * self.scale - 0.25 if self.tail is None else self.tail(y)

    fused, report = fuse_same(M().double().eval(), X, example_inputs=X)
    assert report.fired["fold_affine_into_norm"] >= 1
    assert count(fused, nn.GroupNorm) == 1 and count(fused, nn.Conv2d, nn.BatchNorm2d,
                                                     operator.mul) == 0


class ConvDropoutBN(nn.Module):
    """Dropout between a conv and its BatchNorm, and on a parallel branch: the identity at
    inference, as a module and as F.dropout(training=self.training)."""

    def __init__(self, drop, c=6):
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(c, c, 3, padding=1), bn(c), drop
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1), bn(c)

    def forward(self, x):
        main = self.bn(self.drop(self.conv(x)))
        side = self.bn1(F.dropout(self.conv1(x), 0.3, self.training))
        return main + side + F.dropout2d(x, 0.1, training=False)


@pytest.mark.parametrize("drop", [nn.Dropout(0.5), nn.Dropout2d(0.2), nn.AlphaDropout(0.1),
                                  nn.FeatureAlphaDropout(0.1)], ids=lambda d: type(d).__name__)
def test_dropout_at_inference_is_the_identity(drop):
    model = ConvDropoutBN(drop).double().eval()
    fused, report = fuse_same(model, X)
    assert count(fused, nn.Conv2d) == 1, report.details()  # 3x3 + 1x1 + identity: one conv
    assert count(fused, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout, F.dropout, F.dropout2d) == 0, report.details()


def test_dropout_in_training_or_in_place_stays():
    class InPlace(ConvDropoutBN):
        def forward(self, x):
            return self.bn(F.dropout(self.conv(x), 0.5, False, True))

    model = InPlace(nn.Identity()).double().eval()
    fused, report = fuse_same(model, X)
    assert count(fused, F.dropout) == 1 and count(fused, nn.BatchNorm2d) == 1
    model = ConvDropoutBN(nn.Dropout(0.5)).double().eval()
    model.drop.train()  # random at every call: left as it is, and the BN after it too
    fused, report = reparam.fuse(model, report=True)
    assert count(fused, nn.Dropout) == 1 and count(fused, nn.BatchNorm2d) == 1
    assert count(fused, nn.Conv2d) == 2


def _frozen_bns():
    from timm.layers.norm_act import FrozenBatchNormAct2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    return [FrozenBatchNorm2d, FrozenBatchNormAct2d]


@pytest.mark.parametrize("cls", _frozen_bns(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_frozen_batchnorm_of_torchvision_and_timm_folds(cls):
    """Frozen BNs compute ``x * scale + shift`` from their buffers in their forward:
    traced through, the constants are evaluated and the affine folds into the conv."""
    norm = cls(6)
    g = torch.Generator().manual_seed(3)
    for k in ("weight", "bias", "running_mean"):
        getattr(norm, k).copy_(torch.randn(6, generator=g))
    norm.running_var.copy_(torch.rand(6, generator=g) + 0.5)
    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), norm).double().eval()
    fused, report = fuse_same(model, X)
    assert report.fired["fold_conv_bn"] >= 1, report.details()
    assert count(fused, nn.Conv2d) == 1
    assert count(fused, operator.mul, operator.add, operator.sub, torch.mul, torch.add) == 0


@pytest.mark.parametrize("first", [lambda x: F.avg_pool2d(x, 2, 1, 0, False, True),
                                   lambda x: F.max_pool2d(x, 3, 1, 1), F.silu,
                                   lambda x: F.leaky_relu(x, 0.1)],
                         ids=["avg_pool2d", "max_pool2d", "silu", "leaky_relu"])
def test_types_are_justified_through_functional_pools_and_activations(first):
    """Without example_inputs, the input's rank and channels are read off the first conv,
    through functions that keep them (YOLOv9's AConv pools before its conv)."""
    class PoolFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(6, 8, 3, 2, 1), bn(8)

        def forward(self, x):
            return self.bn(self.conv(first(x)))

    fused, report = fuse_same(PoolFirst().double().eval(), X)
    assert report.fired["fold_conv_bn"] == 1 and count(fused, nn.BatchNorm2d) == 0, report.details()


def test_types_are_justified_by_a_functional_conv_on_a_stored_weight():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))  # groups 2: 6 input channels
            self.bn = bn(8)

        def forward(self, x):
            return self.bn(F.conv2d(x, self.weight, None, 1, 1, 1, 2))

    fused, report = fuse_same(Functional().double().eval(), X)
    assert report.fired["fold_conv_bn"] == 1 and count(fused, nn.BatchNorm2d) == 0, report.details()
