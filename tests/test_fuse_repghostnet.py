"""reparam.fuse on RepGhostNet: every width and re-parameterization variant.

The oracle is the paper's inference form: the fused model must compute what
the training-time model computes in eval mode, have no BatchNorm, exactly as
many convolutions as the hand-built ``deploy=True`` model, and Add nodes only
for the 16 bottleneck shortcuts.
"""
import operator

import pytest

torch = pytest.importorskip("torch")  # the whole module needs torch
from torch import nn

import reparam
from reparam.models import REPARAM_VARIANTS, WIDTHS, RepGhostNet, randomize_bn_, repghostnet

torch.manual_seed(0)


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def add_nodes(gm):
    return sum(n.op == "call_function" and n.target in (operator.add, torch.add)
               for n in gm.graph.nodes)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("variant", REPARAM_VARIANTS)
@pytest.mark.parametrize("width", WIDTHS)
def test_fused_matches_original_and_deploy_structure(width, variant):
    model = randomize_bn_(repghostnet(width, reparam=variant), torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(2, 3, 48, 48)
    fused, report = reparam.fuse(model, report=True)
    with torch.no_grad():
        err32 = rel_err(fused(x), model(x))
    assert err32 <= 1e-5, err32
    assert count(fused, nn.modules.batchnorm._BatchNorm) == 0
    deploy = RepGhostNet(width, reparam=variant, deploy=True)
    assert count(fused, nn.Conv2d) == count(deploy, nn.Conv2d) == 95
    assert add_nodes(fused) == 16  # one per bottleneck shortcut, none inside RepGhost modules
    assert report.after["bn"] == 0
    # the only refusals: composing a 1x1 (or strided depthwise) conv with the conv
    # after it would make a dense kxk conv, which costs more
    assert report.refused and all(r.rule == "compose_convs" and "cost more" in r.reason
                                  for r in report.refused)


@pytest.mark.parametrize("variant", REPARAM_VARIANTS)
@pytest.mark.parametrize("width", WIDTHS)
def test_float64_is_exact(width, variant):
    model = randomize_bn_(repghostnet(width, reparam=variant), torch.Generator().manual_seed(2))
    model = model.double().eval()
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    fused = reparam.fuse(model)
    assert all(p.dtype == torch.float64 for p in fused.parameters())
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) <= 1e-10


def test_repghost_module_is_one_depthwise_conv():
    """The RepGhost module of Fig. 3d folds to Fig. 3e: 1x1 conv, one depthwise 3x3 conv."""
    from reparam.models import RepGhostModule
    block = randomize_bn_(RepGhostModule(8, 16)).eval()
    fused = reparam.fuse(block)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.groups) for c in convs] == [((1, 1), 1), ((3, 3), 16)]
    # fused convs are named after the modules they came from
    names = {n for n, m in fused.named_modules() if isinstance(m, nn.Conv2d)}
    assert names == {"primary_conv_0", "cheap_operation_0"}
    # no ReLU between them (the second ghost module of a bottleneck): still two convs,
    # since one dense 3x3 conv would cost more; the report says so
    block = randomize_bn_(RepGhostModule(8, 16, relu=False)).eval()
    fused, report = reparam.fuse(block, report=True)
    assert len([m for m in fused.modules() if isinstance(m, nn.Conv2d)]) == 2
    [refusal] = report.refused
    assert refusal.rule == "compose_convs" and "would cost more" in refusal.reason
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert rel_err(fused(x), block(x)) <= 1e-5
