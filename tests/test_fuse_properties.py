"""Property tests: random Rep-style blocks through ``reparam.fuse``.

Each block sums 2-4 parallel branches on one input - kxk conv (+BN), BN only,
identity - with random kernel sizes, dilations, groups, strides and bias, and
random (never fresh) BN statistics; blocks are chained with optional ReLU.
"""
import operator

import pytest

torch = pytest.importorskip("torch")  # the whole module needs torch
from hypothesis import given, strategies as st
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import reparam
from reparam.models import randomize_bn_


class Block(nn.Module):
    def __init__(self, branches, act):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return self.act(out)


@st.composite
def branch(draw, c, stride, groups, dilations, identity=True):
    kinds = ["conv", "conv_bn"] + (["bn"] + ["identity"] * identity if stride == 1 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "identity":
        return nn.Identity()
    if kind == "bn":
        return randomize_bn_(nn.BatchNorm2d(c))
    k = draw(st.sampled_from([1, 3, 5, 7]))
    d = draw(st.sampled_from(dilations)) if k > 1 else 1
    conv = nn.Conv2d(c, c, k, stride, d * (k - 1) // 2, d, groups, bias=draw(st.booleans()))
    return nn.Sequential(conv, randomize_bn_(nn.BatchNorm2d(c))) if kind == "conv_bn" else conv


@st.composite
def block(draw, c, mixed):
    stride = draw(st.sampled_from([1, 1, 2]))
    divisors = [g for g in (1, 2, c) if c % g == 0]
    same_g = draw(st.sampled_from(divisors))
    n = draw(st.integers(2, 4))
    branches = [draw(branch(c, stride, draw(st.sampled_from(divisors)) if mixed else same_g,
                            [1, 2, 3] if mixed else [1], identity=i > 0)) for i in range(n)]
    return Block(branches, draw(st.booleans()) if mixed else True)


@st.composite
def network(draw, mixed=False):
    """Blocks of one channel count; ``mixed``: groups and dilations vary between branches."""
    c = draw(st.sampled_from([2, 4, 6]))
    blocks = [draw(block(c, mixed)) for _ in range(draw(st.integers(1, 3)))]
    return nn.Sequential(*blocks).double().eval(), c


def total_ops(model, x):
    """Multiply-adds of convs plus elementwise BN and Add work, from propagated shapes."""
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    mods = dict(gm.named_modules())
    ops = 0
    for n in gm.graph.nodes:
        numel = n.meta["tensor_meta"].shape.numel() if "tensor_meta" in n.meta else 0
        m = mods.get(n.target) if n.op == "call_module" else None
        if isinstance(m, nn.Conv2d):
            ops += numel * m.weight[0].numel()
        elif isinstance(m, nn.BatchNorm2d) or n.target in (operator.add, torch.add):
            ops += numel
    return ops


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def check_equivalent(model, fused, x):
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert ((got - ref).abs().max() <= 1e-10 * ref.abs().max().clamp(min=1)).item()


@given(network(), st.integers(5, 9), st.integers(5, 9))
def test_uniform_groups_blocks_fold_to_one_conv_each(net, h, w):
    """Undilated branches with equal groups always merge (the merged kernel is the largest
    branch's): one conv per block (blocks end in ReLU, so nothing composes across
    them), no BN, no Add, exact."""
    model, c = net
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    fused, report = reparam.fuse(model, report=True)
    check_equivalent(model, fused, x)
    assert count(fused, nn.Conv2d) == len(model)
    assert count(fused, nn.BatchNorm2d) == 0
    assert not any(n.target in (operator.add, torch.add) for n in fused.graph.nodes)
    assert not report.refused


@given(network(mixed=True), st.integers(5, 9), st.integers(5, 9))
def test_mixed_blocks_never_cost_more(net, h, w):
    """Any mix of groups and dilations: exact, never more convs or work, idempotent;
    refusals (e.g. for cost) carry a reason."""
    model, c = net
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    fused, report = reparam.fuse(model, report=True)
    check_equivalent(model, fused, x)
    assert count(fused, nn.Conv2d) <= count(model, nn.Conv2d) + sum(
        count(b, nn.BatchNorm2d) + count(b, nn.Identity) for b in model)
    assert total_ops(fused, x) <= total_ops(model, x)
    assert all(r.reason for r in report.refused)
    again, rep2 = reparam.fuse(fused, report=True)
    assert not rep2.fired and again.code == fused.code
