"""reparam.fuse on small hand-written blocks: refusals, API promises, generality."""
import copy
import warnings

import pytest

torch = pytest.importorskip("torch")  # the whole module needs torch
from torch import nn

import reparam
from reparam.models import RepGhostModule, randomize_bn_


def bn(c):
    return randomize_bn_(nn.BatchNorm2d(c))


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def assert_same(fused, model, x, tol=1e-10):
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= tol


def refusals(report, rule=None):
    return [r for r in report.refused if rule is None or r.rule == rule]


class RepVGGish(nn.Module):
    """3x3 conv+BN, 1x1 conv+BN and an identity-BN on the same input, summed."""

    def __init__(self, c=8):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c))
        self.b = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), bn(c))
        self.c = bn(c)

    def forward(self, x):
        return torch.relu(self.a(x) + self.b(x) + self.c(x))


X = torch.randn(2, 8, 10, 11, dtype=torch.float64)


def test_repvgg_block_becomes_one_conv():
    model = RepVGGish().double().eval()
    fused, report = reparam.fuse(model, report=True)
    assert len(convs(fused)) == 1 and not bns(fused)
    assert report.fired["merge_parallel_branches"] == 1
    assert_same(fused, model, X)


# --- refusals: each leaves the model correct and says why ------------------------------

class ReluInBranch(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), bn(c), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), bn(c))

    def forward(self, x):
        return self.a(x) + self.b(x)


class SharedBranch(nn.Module):
    """The 1x1 branch's output is also used outside the block."""

    def __init__(self, c=8):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.b(x)
        return self.a(x) + y, y * 2


class NoRunningStats(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


class ReflectPadding(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1, padding_mode="reflect")
        self.b = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


class MisalignedPadding(nn.Module):
    """3x3/s2/p1 beside 2x2/s2/p1: outputs line up for odd sizes only."""

    def __init__(self, c=8):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.b = nn.Conv2d(c, c, 2, stride=2, padding=1)

    def forward(self, x):
        return self.a(x) + self.b(x)


@pytest.mark.parametrize("block, rule, reason, x", [
    (ReluInBranch, "merge_parallel_branches", "not linear", X),
    (SharedBranch, "merge_parallel_branches", "also read by", X),
    (NoRunningStats, "fold_conv_bn", "no running statistics", X),
    (ReflectPadding, "merge_parallel_branches", "padding_mode='reflect'", X),
    (MisalignedPadding, "merge_parallel_branches", "misaligned branch padding",
     torch.randn(2, 8, 9, 11, dtype=torch.float64)),
])
def test_refused_with_reason_and_still_correct(block, rule, reason, x):
    model = block().double().eval()
    fused, report = reparam.fuse(model, x, report=True)
    found = refusals(report, rule)
    assert found and all(reason in r.reason for r in found), report
    assert report.fired["merge_parallel_branches"] == 0
    with torch.no_grad():
        ref, got = model(x), fused(x)
    for r, g in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,)):
        assert torch.allclose(r, g, rtol=0, atol=1e-10 * r.abs().max().item())


def test_cost_guard_refuses_dense_merge():
    """depthwise 3x3 + dense 1x1 would merge into a dense 3x3: more multiply-adds, refused."""
    class Block(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
            self.pw = nn.Conv2d(c, c, 1)

        def forward(self, x):
            return self.dw(x) + self.pw(x)

    model = Block().eval()
    fused, report = reparam.fuse(model, report=True)
    assert len(convs(fused)) == 2
    assert any("would cost more" in r.reason for r in report.refused)


# --- API promises ------------------------------------------------------------------------

def test_input_model_is_not_modified():
    model = RepGhostModule(8, 8)
    randomize_bn_(model).train()
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    with pytest.warns(UserWarning, match="training mode"):
        fused = reparam.fuse(model)
    assert not fused.training
    assert flags == [m.training for m in model.modules()]
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and the result shares no storage with the input
    ptrs = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    assert not ptrs & {p.data_ptr() for p in fused.parameters()}


def test_eval_model_gives_no_warning_and_report_attribute():
    model = RepVGGish().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = reparam.fuse(model)
    rep = fused.reparam_report
    assert rep.before["bn"] == 3 and rep.after["bn"] == 0 and rep.after["conv"] == 1
    assert "merge_parallel_branches" in str(rep) and rep.to_dict()["fired"]


def test_fuse_is_idempotent():
    model = randomize_bn_(RepGhostModule(8, 12)).eval()
    once = reparam.fuse(model)
    twice, report = reparam.fuse(once, report=True)
    assert not report.fired and not report.refused
    assert once.code == twice.code
    a, b = once.state_dict(), twice.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_is_preserved(dtype):
    model = RepVGGish().to(dtype).eval()
    fused = reparam.fuse(model)
    assert {p.dtype for p in fused.parameters()} == {dtype}
    x = X.to(dtype)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    assert_same(fused, model, x, tol)


def test_example_inputs_catch_a_wrong_rule():
    """A rule that drops BatchNorm is caught by verification against the original."""
    from reparam.rewrite import rule

    @rule("bn")
    def drop_bn(graph, node):
        graph.replace(node, node.inputs[0])
        return True

    model = RepVGGish().double().eval()
    with pytest.raises(reparam.VerificationError, match="above the tolerance"):
        reparam.fuse(model, X, rules=[drop_bn])
    assert len(bns(reparam.fuse(model, X))) == 0  # the default rules verify fine


def test_non_module_is_rejected():
    with pytest.raises(TypeError, match="nn.Module"):
        reparam.fuse(42)


# --- nothing keys on class or module names -------------------------------------------------

class SomeoneElsesGhost(nn.Module):
    """RepGhost module written independently: different classes and attribute names."""

    def __init__(self, src: RepGhostModule):
        super().__init__()
        p = src.primary_conv
        self.squeeze = p[0]
        self.norm0 = p[1]
        self.act = nn.ReLU()
        self.spatial = src.cheap_operation[0]
        self.norm1 = src.cheap_operation[1]
        self.skip_norm = src.fusion_bn[0]

    def forward(self, inp):
        h = self.act(self.norm0(self.squeeze(inp)))
        return torch.relu(self.skip_norm(h) + self.norm1(self.spatial(h)))


def test_same_structure_fuses_the_same_way():
    original = randomize_bn_(RepGhostModule(8, 12)).double().eval()
    other = SomeoneElsesGhost(copy.deepcopy(original)).eval()
    f1, r1 = reparam.fuse(original, report=True)
    f2, r2 = reparam.fuse(other, report=True)
    del r1.fired["drop_identity"]  # the release wraps the BN branch in an nn.Identity
    assert r1.fired == r2.fired
    assert [r1.after[k] for k in ("conv", "bn", "add")] == [r2.after[k] for k in ("conv", "bn", "add")]
    w1 = [(c.weight, c.bias) for c in convs(f1)]
    w2 = [(c.weight, c.bias) for c in convs(f2)]
    assert len(w1) == len(w2) == 2
    for (a, b), (c, d) in zip(w1, w2):
        assert torch.allclose(a, c, rtol=1e-12, atol=0) and torch.allclose(b, d, rtol=1e-12, atol=1e-14)
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    assert_same(f2, other, x)


@pytest.mark.parametrize("bias, padding, folds", [
    (False, 1, True),   # pointwise without bias before a padded conv: exact
    (True, 0, True),    # the second conv does not pad: exact whatever the bias
    (True, 1, False),   # the bias would leak through the zero padding: refused
])
def test_conv_chain_composes_when_exact_and_cheaper(bias, padding, folds):
    model = nn.Sequential(nn.Conv2d(8, 8, 1, bias=bias), nn.Conv2d(8, 8, 3, padding=padding)).double()
    fused, report = reparam.fuse(model.eval(), report=True)
    assert len(convs(fused)) == (1 if folds else 2)
    assert report.fired["compose_convs"] == int(folds)
    if not folds:
        [r] = report.refused
        assert "leak" in r.reason
    assert_same(fused, model, X)


# --- partial tracing -------------------------------------------------------------------

class DataDependentHead(nn.Module):
    """A RepVGG-like backbone, then Python control flow on a tensor value."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(RepVGGish(), nn.ReLU(), RepVGGish())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.backbone(x)
        if y.mean() > 0:  # not traceable
            return self.head(y)
        return -self.head(y)


def test_untraceable_model_fuses_its_traceable_parts():
    model = DataDependentHead().double().eval()
    fused, report = reparam.fuse(model, X, report=True)
    assert isinstance(fused, DataDependentHead) and fused is not model
    assert len(convs(fused.backbone)) == 2 and not bns(fused)
    assert report.fired["merge_parallel_branches"] == 2
    assert any("skipped <model>" in n and "TraceError" in n for n in report.notes)
    assert len(bns(model)) == 6  # the input is untouched
    assert_same(fused, model, X)
    assert_same(fused, model, -X)  # both sides of the branch


def test_leaf_modules_stay_opaque():
    model = nn.Sequential(RepVGGish(), RepVGGish()).double().eval()
    fused, report = reparam.fuse(model, report=True, leaf_modules=[model[1]])
    assert report.fired["merge_parallel_branches"] == 1
    assert len(bns(fused)) == 3  # the leaf block was not looked into
    assert_same(fused, model, X)


def test_nothing_traceable_is_a_clear_error():
    class Opaque(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(reparam.TraceError, match="could not trace Opaque"):
        reparam.fuse(Opaque())


@pytest.mark.parametrize("padding, folds", [(0, True), (1, False)])
def test_bn_before_conv_folds_only_without_padding(padding, folds):
    """BN's shift would meet the conv's zero padding at the border: folded only without it."""
    model = nn.Sequential(bn(8), nn.Conv2d(8, 6, 3, padding=padding)).double().eval()
    fused, report = reparam.fuse(model, report=True)
    assert (len(bns(fused)), len(convs(fused))) == ((0, 1) if folds else (1, 1))
    if not folds:
        assert "leak" in report.refused[0].reason
    assert_same(fused, model, X)


def test_float16_overflow_is_refused_with_a_warning():
    """A BN whose scale pushes the folded weights past float16's range is left unfolded."""
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1000.0)
        model[1].running_var.fill_(0.0)  # scale 1/sqrt(eps) = 316: weights 3e5 > 65504
    model = model.half()
    with pytest.warns(UserWarning, match="overflow float16"):
        fused, report = reparam.fuse(model, report=True)
    assert len(bns(fused)) == 1 and "0" in report.refused[0].reason
    assert all(torch.isfinite(p).all() for p in fused.parameters())


def test_float16_model_folds_in_float64_and_casts_back():
    model = RepVGGish().eval()
    x = torch.randn(1, 8, 6, 6)
    ref64 = model.double()(x.double())
    fused = reparam.fuse(model.half())
    assert {p.dtype for p in fused.parameters()} == {torch.float16}
    with torch.no_grad():
        err = (fused.double()(x.double()) - ref64).abs().max() / ref64.abs().max()
    assert err < 2e-3  # only float16 rounding of the folded weights


def test_concrete_args_make_a_flagged_forward_traceable():
    class Flagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = RepVGGish()

        def forward(self, x, flip: bool = False):
            y = self.block(x)
            return -y if flip else y

    model = Flagged().double().eval()
    fused, report = reparam.fuse(model, report=True, concrete_args={"flip": False})
    assert isinstance(fused, torch.fx.GraphModule) and not report.notes
    assert len(convs(fused)) == 1
    assert_same(fused, model, X)
