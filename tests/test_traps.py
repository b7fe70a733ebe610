"""Traps: model code spelled the way real projects spell it, which a lifter that guesses folds
wrongly. Each case must come back as the same function (float64, 1e-9 relative) with the input
model unchanged - and where something is foldable, folded."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reparam
from reparam.models import randomize_bn_

torch.set_num_threads(1)
TOL = 1e-9


def bn(c, cls=nn.BatchNorm2d):
    return randomize_bn_(cls(c))


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def snapshot(model):
    """Everything of ``model`` a fuse could change: tensors (values and identity), flags, hooks."""
    return ({k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
            {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
            [(n, type(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
             for n, m in model.named_modules()])


def assert_unchanged(model, before):
    values, ids, flags = snapshot(model)
    assert flags == before[2]
    assert ids == before[1]
    for k, v in before[0].items():
        assert torch.equal(values[k], v), f"{k} changed"


def rel_err(got, ref):
    return ((got - ref).abs().max() / ref.abs().max()).item()


def check(model, *xs, example_inputs=None, **kw):
    """Fuse ``model``; assert the fused model computes what a copy of the original computes,
    that ``model`` is unchanged; return (fused, report)."""
    reference = copy.deepcopy(model)
    before = snapshot(model)
    fused, report = reparam.fuse(model, example_inputs, report=True, **kw)
    assert_unchanged(model, before)
    with torch.no_grad():
        ref = reference(*[x.clone() for x in xs])
        got = fused(*[x.clone() for x in xs])
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert rel_err(got, ref) <= TOL, report.details()
    return fused, report


def kept(report, kind):
    return [k for k in report.kept if k.kind == kind]


X = torch.randn(2, 6, 9, 10, dtype=torch.float64)


class TwoBranches(nn.Module):
    """conv+BN and conv+BN on one input, summed by ``combine``."""

    def __init__(self, combine, c=6):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c))
        self.b = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), bn(c))
        self.combine = combine

    def forward(self, x):
        return self.combine(self.a(x), self.b(x))


# --- keyword arguments: alpha is a coefficient, not noise --------------------------------------

@pytest.mark.parametrize("combine", [
    lambda a, b: torch.add(a, b, alpha=2.0),
    lambda a, b: a.add(b, alpha=3),
    lambda a, b: torch.add(a, 1.0, alpha=3) + b,
    lambda a, b: torch.sub(a, b, alpha=0.5),
    lambda a, b: a.sub(b, alpha=-2),
    lambda a, b: torch.add(input=a, other=b, alpha=1.5),
], ids=["torch.add-alpha", "Tensor.add-alpha", "scalar-alpha", "torch.sub-alpha",
        "Tensor.sub-alpha", "keywords"])
def test_alpha_is_a_coefficient(combine):
    fused, report = check(TwoBranches(combine).double().eval(), X)
    assert len(convs(fused)) == 1 and not bns(fused)  # still folded: alpha is understood
    assert report.fired["merge_parallel_branches"] == 1


@pytest.mark.parametrize("combine", [
    lambda a, b: torch.add(a, b, out=torch.empty_like(a)),
    lambda a, b: torch.div(a, b, rounding_mode="floor") + a,
    lambda a, b: torch.add(a, b, alpha=a.shape[1]),
], ids=["out", "rounding_mode", "traced-alpha"])
def test_unchecked_arguments_stay_opaque(combine):
    fused, report = check(TwoBranches(combine).double().eval(), X)
    assert len(convs(fused)) == 2 and not bns(fused)  # each conv+BN folds, the sum does not


# --- functions that share a name with an IR op -------------------------------------------------

def identity(x):
    return 2 * x + 1


def conv(x):
    return x.flip(-1)


def add(x, y):
    return x * y


torch.fx.wrap("identity")
torch.fx.wrap("conv")
torch.fx.wrap("add")


class NamedLikeIROps(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = bn(c)

    def forward(self, x):
        y = self.bn(conv(identity(self.c1(x))))
        return add(y, x)


def test_user_functions_named_like_ir_ops_are_opaque():
    fused, report = check(NamedLikeIROps().double().eval(), X)
    assert len(bns(fused)) == 1  # the BN reads conv(...), a user function: nothing to fold into
    labels = set(report.before)
    assert {"test_traps.identity", "test_traps.conv", "test_traps.add"} <= labels


# --- subclasses, hooks, parametrizations ---------------------------------------------------------

class StdConv2d(nn.Conv2d):
    """Weight standardisation in the forward (timm's StdConv2d, written from its idea)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm then ReLU in one module (timm's BatchNormAct2d, written from its idea)."""

    def forward(self, x):
        return F.relu(super().forward(x))


class RenamedConv(nn.Conv2d):
    """A subclass that computes exactly what Conv2d does: it may be lifted as one."""


def conv_bn(conv_cls=nn.Conv2d, bn_cls=nn.BatchNorm2d, c=6):
    return nn.Sequential(conv_cls(c, c, 3, padding=1), bn(c, bn_cls)).double().eval()


def test_conv_subclass_with_its_own_forward_is_not_lifted():
    fused, report = check(conv_bn(StdConv2d), X, example_inputs=X)  # traced through
    assert len(bns(fused)) == 1
    [k] = [k for k in report.kept if k.op == "torch.conv2d"]  # the functional conv it calls
    assert k.kind == "arguments" and "weight is not a stored tensor" in k.reason
    fused, report = check(conv_bn(StdConv2d), X, leaf_modules=[StdConv2d])  # a leaf
    assert len(bns(fused)) == 1
    [k] = kept(report, "subclass")
    assert "StdConv2d" in k.reason


def test_batchnorm_subclass_given_as_leaf_keeps_its_activation():
    model = conv_bn(bn_cls=BatchNormAct2d)
    fused, report = check(model, X, leaf_modules=[BatchNormAct2d])
    assert len(bns(fused)) == 1 and "BatchNormAct2d" in kept(report, "subclass")[0].reason


def test_timm_batchnormact_given_as_leaf_keeps_its_activation():
    norm_act = pytest.importorskip("timm.layers.norm_act", reason="timm is not installed")
    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1),
                          randomize_bn_(norm_act.BatchNormAct2d(6))).double().eval()
    fused, report = check(model, X, leaf_modules=[norm_act.BatchNormAct2d])
    assert len(bns(fused)) == 1 and kept(report, "subclass")


def test_renamed_subclass_is_lifted_as_its_base():
    fused, report = check(conv_bn(RenamedConv), X, leaf_modules=[RenamedConv])
    assert not bns(fused) and report.fired["fold_conv_bn"] == 1


def test_qat_conv_keeps_its_fake_quantised_weight():
    qat = torch.ao.nn.qat.Conv2d(6, 6, 3, padding=1,
                                 qconfig=torch.ao.quantization.get_default_qat_qconfig("fbgemm"))
    model = nn.Sequential(qat, bn(6)).eval()
    x = torch.randn(2, 6, 9, 10)
    reference, before = copy.deepcopy(model), snapshot(model)
    fused, report = reparam.fuse(model, report=True)
    assert_unchanged(model, before)
    with torch.no_grad():
        assert torch.equal(fused(x), reference(x))
    assert len(bns(fused)) == 1 and kept(report, "subclass")


@pytest.mark.parametrize("where", ["conv", "bn"])
@pytest.mark.parametrize("hook", ["forward", "pre"])
def test_hooks_are_kept(where, hook):
    model = conv_bn()
    m = model[0] if where == "conv" else model[1]
    if hook == "forward":
        m.register_forward_hook(lambda mod, args, out: out * 1.5 + 0.25)
    else:
        m.register_forward_pre_hook(lambda mod, args: (args[0].flip(-1),))
    fused, report = check(model, X)
    assert len(bns(fused)) == 1 and kept(report, "hooks")


def test_weight_norm_and_spectral_norm_are_read_live():
    legacy = conv_bn()
    torch.nn.utils.weight_norm(legacy[0])  # a forward pre-hook recomputes the weight
    with torch.no_grad():
        legacy(X)
        legacy[0].weight_g.mul_(1.7)  # the stored .weight is stale until the next forward
    fused, report = check(legacy, X)
    assert len(bns(fused)) == 1 and kept(report, "hooks")
    legacy(X)  # with grad: its .weight is now a computed tensor (copy.deepcopy refuses it)
    before = snapshot(legacy)
    fused, report = reparam.fuse(legacy, report=True)
    assert_unchanged(legacy, before)
    assert len(bns(fused)) == 1 and kept(report, "hooks")
    with torch.no_grad():
        assert rel_err(fused(X), legacy(X)) <= TOL

    class Uncopyable:
        def __deepcopy__(self, memo):
            raise TypeError("this object cannot be copied")

    legacy.handle = Uncopyable()
    with pytest.raises(reparam.ReparamError, match="cannot copy the model.*cannot be copied"):
        reparam.fuse(legacy)
    assert_unchanged(legacy, before)

    spectral = conv_bn()
    torch.nn.utils.spectral_norm(spectral[0])  # the legacy form: a pre-hook, and copyable
    fused, report = check(spectral.eval(), X)
    assert len(bns(fused)) == 1 and kept(report, "hooks")

    for norm in (torch.nn.utils.parametrizations.weight_norm,
                 torch.nn.utils.parametrizations.spectral_norm):
        model = conv_bn()
        norm(model[0])
        model.eval()
        fused, report = check(model, X)
        assert len(bns(fused)) == 1 and kept(report, "parametrized")


def test_forward_replaced_on_the_instance():
    model = conv_bn()
    c = model[0]
    c.forward = lambda x: nn.Conv2d.forward(c, x) * 2
    fused, report = check(model, X)
    assert len(bns(fused)) == 1 and kept(report, "subclass")


# --- in-place ops and side effects ----------------------------------------------------------------

class InPlaceBetween(nn.Module):
    """``y = c(x)``, then an in-place op on ``x``, then ``bn(y) + c2(x)``: ``c2`` reads the
    changed ``x`` (through the op's result, or through ``x`` itself when the result is
    dropped), ``c`` the original."""

    def __init__(self, how, keep_result, c=6):
        super().__init__()
        self.c, self.c2, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1), bn(c)
        self.how, self.keep_result = how, keep_result

    def forward(self, x):
        y = self.c(x)
        if self.keep_result:
            x = self.how(x)
        else:
            self.how(x)
        return self.bn(y) + self.c2(x)


def through_a_view(x):
    x.view(-1).add_(1.0)
    return x


INPLACE = [torch.relu_, lambda x: x.relu_(), lambda x: x.mul_(2.0),
           lambda x: F.relu(x, inplace=True), nn.ReLU(inplace=True), through_a_view]
INPLACE_IDS = ["torch.relu_", "Tensor.relu_", "Tensor.mul_", "F.relu-inplace", "ReLU-inplace",
               "through-a-view"]


@pytest.mark.parametrize("how", INPLACE, ids=INPLACE_IDS)
@pytest.mark.parametrize("keep_result", [True, False], ids=["x=op(x)", "op(x)"])
def test_rewrites_never_cross_an_inplace_op(how, keep_result):
    fused, report = check(InPlaceBetween(how, keep_result).double().eval(), X)
    assert not bns(fused)  # the BN folds into c, which reads x before the op changes it
    if not keep_result:  # c2 reads x itself: merging c and c2 would read one x for both
        assert len(convs(fused)) == 2
        assert any(r.kind == "effects" for r in report.refused), report.details()


def test_inplace_activation_after_a_block_still_folds():
    class Block(nn.Module):
        def __init__(self, c=6):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c))
            self.b = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), bn(c))
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(self.a(x) + self.b(x) + x)

    model = nn.Sequential(Block(), Block()).double().eval()
    fused, report = check(model, X)
    assert len(convs(fused)) == 2 and not bns(fused)


class InPlaceOnAPartialSum(nn.Module):
    """``s = a(relu(x)) + x/2; t = s + b(x); s.relu_(); out = t + x``: merging ``b(x) + x``
    rebuilds the sum as ``merged(x) + s`` at ``out``, reading ``s`` after ``relu_`` changed it
    (``t`` read it before)."""

    def __init__(self, how, c=6):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Sequential(nn.Conv2d(c, c, 1), bn(c))
        self.how = how

    def forward(self, x):
        s = self.a(torch.relu(x)) + x * 0.5
        t = s + self.b(x)
        self.how(s)
        return t + x


@pytest.mark.parametrize("how", INPLACE, ids=INPLACE_IDS)
def test_flattened_sums_never_read_past_an_inplace_op(how):
    fused, report = check(InPlaceOnAPartialSum(how).double().eval(), X)
    assert not bns(fused)  # the BN still folds into its conv
    assert not report.fired.get("merge_parallel_branches")  # the rebuilt sum would read s late
    assert any(r.kind == "effects" and r.rule == "merge_parallel_branches"
               for r in report.refused), report.details()


def test_flattened_sum_without_an_inplace_op_merges():
    fused, report = check(InPlaceOnAPartialSum(lambda s: s).double().eval(), X)
    assert len(convs(fused)) == 2 and not bns(fused)
    assert report.fired.get("merge_parallel_branches"), report.details()


class NoOpAffineBeforeAnInplaceOp(nn.Module):
    """``y = x * 1`` is a copy of ``x``; ``x`` then changes in place: ``y`` is not ``x``."""

    def __init__(self, how, c=6):
        super().__init__()
        self.c, self.how = nn.Conv2d(c, c, 1), how
        self.register_buffer("one", torch.ones(c, 1, 1))

    def forward(self, x):
        x = self.c(x) - 0.5
        y = x * self.one
        self.how(x)
        return torch.cat([y, x], 1)


@pytest.mark.parametrize("how", INPLACE, ids=INPLACE_IDS)
def test_noop_affine_is_kept_when_its_input_changes_later(how):
    fused, report = check(NoOpAffineBeforeAnInplaceOp(how).double().eval(), X)
    assert any(r.kind == "effects" and r.rule == "drop_noop_affine"
               for r in report.refused), report.details()


def test_noop_affine_is_dropped():
    fused, report = check(NoOpAffineBeforeAnInplaceOp(lambda x: x).double().eval(), X)
    assert report.fired.get("drop_noop_affine"), report.details()


class Augmented(nn.Module):
    """``a = bn(conv(x)); a op= bn(conv1x1(x))``, with a view of ``a`` taken before the
    assignment and read after it when ``view`` (the view sees the change)."""

    def __init__(self, op, view, c=6):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c))
        self.b = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), bn(c))
        self.op, self.view = op, view

    def forward(self, x):
        a = self.a(x)
        v = a[:, :3] if self.view else None
        if self.op == "+=":
            a += self.b(x)
        elif self.op == "-=":
            a -= self.b(x)
        elif self.op == "*=":
            a *= 0.5
        else:
            a /= 4.0
        return torch.cat([v, a], 1) if self.view else torch.relu(a)


@pytest.mark.parametrize("op", ["+=", "-=", "*=", "/="])
@pytest.mark.parametrize("view", [True, False], ids=["view-read-after", "no-alias"])
def test_augmented_assignment_changes_what_aliases_it(op, view):
    """torch.fx traces ``a += b`` as ``a = a + b``: a view of ``a`` read afterwards was traced
    as unchanged (the fused model returned the view without the sum). Traced as the in-place
    call it is, and folded as a sum only where nothing else sees ``a``."""
    fused, report = check(Augmented(op, view).double().eval(), X)
    assert not bns(fused)  # each conv+BN folds
    merged = 1 if op in ("*=", "/=") else int(not view)  # a scale folds into the conv
    assert len(convs(fused)) == 2 - merged, report.details()


def test_augmented_assignment_on_an_input_is_kept():
    """``x += ...`` changes the caller's tensor: it stays the in-place call it is."""
    class M(nn.Module):
        def __init__(self, c=6):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c))

        def forward(self, x):
            y = self.a(x)
            x += 1.0
            return y + x

    model = M().double().eval()
    x = X.clone()
    reference = copy.deepcopy(model)(X.clone())
    fused = reparam.fuse(model)
    assert rel_err(fused(x), reference) <= TOL
    assert torch.equal(x, X + 1.0)  # changed as the original changes it


class SideEffect(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), bn(c)
        self.register_buffer("calls", torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        self.calls.add_(1)
        return self.bn(self.conv(x)) * self.calls


def test_fuse_never_runs_the_callers_model():
    model = SideEffect().double().eval()
    fused, report = check(model, X)
    assert model.calls.item() == 0
    assert not bns(fused)  # the BN folds; the buffer, changed in place, is not a constant
    fused, report = check(model, X, example_inputs=X)  # the check runs copies too
    assert model.calls.item() == 0


def test_mutated_parameter_is_not_a_constant():
    class Scaled(nn.Module):
        def __init__(self, c=6):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.scale = nn.Parameter(torch.rand(1, c, 1, 1, dtype=torch.float64) + 0.5)

        def forward(self, x):
            y = self.conv(x) * self.scale
            self.scale.data.mul_(1.01)
            return y

    model = Scaled().double().eval()
    reference = copy.deepcopy(model)
    fused = reparam.fuse(model)
    assert model.scale.data.equal(reference.scale.data)
    with torch.no_grad():
        for _ in range(3):  # the scale changes at every call, in both
            assert rel_err(fused(X), reference(X)) <= TOL


def test_batchnorm_in_training_mode_inside_an_eval_model():
    model = conv_bn()
    model[1].train()
    with pytest.warns(UserWarning, match=r"training mode inside a model in eval mode.*\b1\b"):
        fused, report = check(model, X)
    assert len(bns(fused)) == 1 and bns(fused)[0].training
    assert kept(report, "training")


# --- types: rank, broadcasting, dtype ------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 3])  # N == C, and N != C
def test_batchnorm1d_on_a_matrix_is_a_per_feature_affine(n):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = bn(4, nn.BatchNorm1d)

        def forward(self, x):
            return x + self.bn(x)

    x = torch.randn(n, 4, dtype=torch.float64)
    fused, report = check(M().double().eval(), x, example_inputs=x)
    assert not bns(fused) and report.fired["merge_parallel_branches"] == 1  # x * a + b


@pytest.mark.parametrize("shape", [(10, 1), (1, 1, 1, 1, 1), (6, 1, 1, 1, 1), (10, 10)])
def test_constants_that_are_not_per_channel(shape):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.register_buffer("k", torch.rand(*shape, dtype=torch.float64) + 0.5)

        def forward(self, x):
            return self.conv(x) * self.k

    x = torch.randn(2, 6, 10, 10, dtype=torch.float64)
    fused, report = check(M().double().eval(), x, example_inputs=x)
    assert report.fired["fold_conv_bn"] == 0 and not report.notes


def test_per_channel_constant_still_folds():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.register_buffer("k", torch.rand(6, 1, 1, dtype=torch.float64) + 0.5)

        def forward(self, x):
            return self.conv(x) * self.k - 0.5

    fused, report = check(M().double().eval(), X)
    assert report.fired["fold_conv_bn"] == 2 and len(convs(fused)) == 1


def test_float64_parameter_promotes_a_float32_conv():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.scale = nn.Parameter(torch.rand(1, 6, 1, 1, dtype=torch.float64) + 0.5)

        def forward(self, x):
            return self.conv(x) * self.scale

    model = M().eval()
    x = torch.randn(2, 6, 9, 10)
    fused, report = reparam.fuse(model, report=True)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert got.dtype == ref.dtype == torch.float64 and torch.equal(got, ref)


def test_complex_convs_are_not_merged():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(6, 6, 3, padding=1, dtype=torch.complex128)
            self.b = nn.Conv2d(6, 6, 1, dtype=torch.complex128)

        def forward(self, x):
            return self.a(x) + self.b(x)

    x = torch.randn(2, 6, 9, 10, dtype=torch.complex128)
    fused, report = check(M().eval(), x, example_inputs=x)
    assert len(convs(fused)) == 2 and kept(report, "dtype")


def test_unbatched_input_is_not_a_batch():
    class Convs(nn.Module):  # nn.Conv2d also reads an unbatched (C, H, W) tensor
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    x = torch.randn(6, 9, 10, dtype=torch.float64)
    fused, report = check(Convs().double().eval(), x, example_inputs=x)
    assert len(convs(fused)) == 2 and len(kept(report, "rank")) == 2
    fused, report = check(Convs().double().eval(), x[None], example_inputs=x[None])
    assert len(convs(fused)) == 1  # batched, the same convs merge


def test_types_come_from_example_inputs_when_the_graph_cannot_tell():
    class Scaled(nn.Module):  # the input is scaled by a tensor: its shape is not readable
        def __init__(self):
            super().__init__()
            self.m = conv_bn()
            self.register_buffer("mean", torch.zeros(1, 6, 1, 1, dtype=torch.float64))

        def forward(self, x):
            return self.m(x - self.mean)

    model = Scaled().double().eval()
    fused, report = check(model, X)
    assert fused is not None
    fused, report = check(model, X, example_inputs=X)
    assert not bns(fused)


def test_every_conv_and_batchnorm_left_has_a_reason():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.std = StdConv2d(6, 6, 3, padding=1)
            self.bn1 = bn(6)
            self.plain = nn.Conv2d(6, 6, 3, padding=1)
            self.bn2 = bn(6)

        def forward(self, x):
            y = F.batch_norm(self.std(x), self.bn1.running_mean, self.bn1.running_var,
                             self.bn1.weight, self.bn1.bias, False, 0.0, self.bn1.eps)
            return torch.relu(self.bn2(torch.relu(self.plain(y))))

    fused, report = check(Mixed().double().eval(), X, example_inputs=X)
    kinds = {(k.op, k.node, k.kind) for k in report.kept}
    assert ("torch.conv2d", "conv2d", "arguments") in kinds  # StdConv2d's forward, traced through
    assert ("bn", "batch_norm", "alone") in kinds  # F.batch_norm, lifted, with nothing to fold
    assert ("conv", "plain", "padding") in kinds  # the BN before it meets its zero padding
    assert ("bn", "bn2", "alone") in kinds
    text = str(report)
    assert "kept x1 [arguments], e.g. torch.conv2d conv2d" in text
    assert "kept x2 [alone], e.g. bn batch_norm" in text


@pytest.mark.parametrize("training", [True, False])
def test_functional_batchnorm_in_training_updates_its_statistics(training):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(6, 6, 3, padding=1), bn(6)
            self.scale = nn.Conv2d(6, 6, 1)

        def forward(self, x):
            y = F.batch_norm(self.conv(x), self.norm.running_mean, self.norm.running_var,
                             training=training)
            return self.norm(self.scale(y))  # the module reads the statistics F.batch_norm updates

    model = M().double().eval()
    reference = copy.deepcopy(model)
    fused, report = reparam.fuse(model, report=True)
    with torch.no_grad():
        for _ in range(2):
            assert rel_err(fused(X), reference(X)) <= TOL
    assert report.fired["fold_conv_bn"] == (0 if training else 2)


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv_bn()

    def forward(self, x):
        return self.bn(self.conv(x))


class UnderAutocast(nn.Module):
    """torch.fx does not record an autocast region: the traced graph would run in float32."""

    def __init__(self):
        super().__init__()
        self.block = ConvBN()

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.block(x)


def test_forward_under_autocast_is_not_traced_as_if_it_were_not():
    model = UnderAutocast().float().eval()
    x = X.float()
    before = snapshot(model)
    fused, report = reparam.fuse(model, report=True)
    assert_unchanged(model, before)
    assert any("torch.autocast" in n for n in report.notes), report.details()
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert got.dtype == ref.dtype == torch.bfloat16
    assert rel_err(got, ref) <= 2e-2  # the block, fused on its own, runs under the autocast
    assert len(bns(fused)) == 0  # ... of its untraced parent


class CollectsFeatures(nn.Module):
    """The forward appends an intermediate to a list and keeps its last output, which code
    around it reads: torch.fx does not record either (they would be lost)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = ConvBN(), ConvBN()
        self.features = []

    def forward(self, x):
        y = self.first(x)
        self.features.append(y)
        self.last = self.second(y)
        return self.last * 2


def test_forward_that_stores_traced_values_keeps_its_side_effect():
    model = CollectsFeatures().eval()
    before = snapshot(model)
    fused, report = reparam.fuse(model, report=True)
    assert_unchanged(model, before)
    assert model.features == [] and not hasattr(model, "last")
    assert any("stores a traced value in 'features'" in n for n in report.notes), report.details()
    assert fused.features == [] and not hasattr(fused, "last")  # nothing left by the trace
    with torch.no_grad():
        out = fused(X)
        ref = model(X)
    assert rel_err(out, ref) <= TOL
    assert len(fused.features) == 1 and rel_err(fused.features[0], model.features[0]) <= TOL
    assert rel_err(fused.last, model.last) <= TOL
    assert len(bns(fused)) == 0  # the parts, fused on their own
