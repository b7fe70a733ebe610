"""Tests for the RepGhostNet reference model (reparam/models/repghost.py).

The fixture tests/data/repghostnet_1.0x_keys.txt lists the (key, shape) pairs
of the official release's state_dict for width 1.0, training form.  It was
derived from the official definition (github.com/ChengpengChen/RepGhost,
file model/repghost.py, commit 821333ec): a scratch transcription of that file
(never part of this repository) was instantiated with repghostnet_1_0x() and
its state_dict() was written out in order, one "key shape" line per entry.
Published checkpoints load with strict=True exactly when keys and shapes agree.
"""
import ast
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the whole module needs torch
import torch.nn as nn
from torch.fx import symbolic_trace

from reparam.models.repghost import (
    WIDTHS,
    RepGhostModule,
    RepGhostNet,
    convert_to_deploy,
    randomize_bn_,
    repghostnet,
)

FIXTURE = Path(__file__).parent / "data" / "repghostnet_1.0x_keys.txt"
FORMS = [("bn", False), ("identity", False), (None, False), ("bn", True)]
FORM_IDS = ["bn", "identity", "none", "deploy"]

# Table 2 of the paper, bottleneck rows only: (in, out, SE, stride).
TABLE2 = [
    (16, 16, False, 1),
    (16, 24, False, 2),
    (24, 24, False, 1),
    (24, 40, True, 2),
    (40, 40, True, 1),
    (40, 80, False, 2),
    (80, 80, False, 1),
    (80, 80, False, 1),
    (80, 80, False, 1),
    (80, 112, True, 1),
    (112, 112, True, 1),
    (112, 160, True, 2),
    (160, 160, False, 1),
    (160, 160, True, 1),
    (160, 160, False, 1),
    (160, 160, True, 1),
]


def official_keys():
    entries = []
    for line in FIXTURE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            entries.append((key, ast.literal_eval(shape)))
    return entries


def keys_and_shapes(model):
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_state_dict_matches_official_release_1_0x():
    assert keys_and_shapes(repghostnet(1.0)) == official_keys()


@pytest.mark.parametrize("width", WIDTHS)
def test_key_set_is_width_independent(width):
    expected = {key for key, _ in official_keys()}
    assert set(repghostnet(width).state_dict()) == expected


def test_0_5x_has_the_1_0x_key_set_with_narrower_tensors():
    half, full = repghostnet(0.5).state_dict(), repghostnet(1.0).state_dict()
    assert set(half) == set(full)
    assert half["conv_stem.weight"].shape == (8, 3, 3, 3)


def test_variant_and_deploy_keys_follow_from_official_keys():
    official = official_keys()
    no_branch = [(k, s) for k, s in official if ".fusion_bn." not in k]
    assert keys_and_shapes(repghostnet(1.0, reparam="identity")) == no_branch
    assert keys_and_shapes(repghostnet(1.0, reparam=None)) == no_branch

    # Release deploy form: cheap_operation.{0.weight, 1.*} -> cheap_operation.{weight, bias}.
    deploy = []
    for key, shape in no_branch:
        if ".cheap_operation.0.weight" in key:
            prefix = key.replace("0.weight", "")
            deploy += [(prefix + "weight", shape), (prefix + "bias", (shape[0],))]
        elif ".cheap_operation.1." not in key:
            deploy.append((key, shape))
    assert keys_and_shapes(repghostnet(1.0, deploy=True)) == deploy


def expected_counts(form):
    """(#Conv2d, #BatchNorm2d) derived from Table 2, independently of the model code."""
    reparam, deploy = form
    conv, bn = 1, 1  # stem
    for cin, cout, se, stride in TABLE2:
        per_module_bn = 1 + (not deploy) + (reparam == "bn" and not deploy)  # primary, cheap, branch
        conv += 2 * 2  # two RepGhost modules: 1x1 primary + depthwise cheap conv
        bn += 2 * per_module_bn
        conv, bn = conv + (stride > 1), bn + (stride > 1)  # downsampling dw conv + BN
        conv += 2 * se  # SE reduce / expand
        if cin != cout or stride > 1:  # shortcut block: dw conv + BN, 1x1 conv + BN
            conv, bn = conv + 2, bn + 2
    return conv + 2, bn + 1  # 1x1 conv + BN to 960 channels, conv_head


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_module_counts_match_stage_table(form):
    model = repghostnet(1.0, reparam=form[0], deploy=form[1])
    assert (count(model, nn.Conv2d), count(model, nn.BatchNorm2d)) == expected_counts(form)


def test_module_counts_width_1_0_literal():
    assert expected_counts(("bn", False)) == (95, 112)
    assert expected_counts(("bn", True)) == (95, 48)
    assert expected_counts((None, False)) == expected_counts(("identity", False)) == (95, 80)


def test_deploy_cheap_paths_are_single_biased_depthwise_convs():
    model = convert_to_deploy(randomize_bn_(repghostnet(1.0)).eval())
    modules = [m for m in model.modules() if isinstance(m, RepGhostModule)]
    assert len(modules) == 2 * len(TABLE2)
    for module in modules:
        conv = module.cheap_operation
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        assert conv.groups == conv.in_channels == conv.out_channels
        assert len(module.fusion_bn) == len(module.fusion_conv) == 0
        # The only BN left in a deploy RepGhost module is the primary conv's.
        assert [n for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["primary_conv.1"]


@pytest.mark.parametrize("width", WIDTHS)
def test_forward_every_width_and_form(width):
    x = torch.randn(1, 3, 32, 32)
    for reparam, deploy in FORMS:
        model = repghostnet(width, reparam=reparam, deploy=deploy, num_classes=10).eval()
        with torch.no_grad():
            assert model(x).shape == (1, 10)


def test_training_mode_forward_backward():
    model = repghostnet(0.5, num_classes=10).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("reparam", ["bn", "identity", None])
@pytest.mark.parametrize("width", [0.5, 1.0])
def test_convert_to_deploy_is_equivalent(width, reparam, dtype, rtol):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = randomize_bn_(repghostnet(width, reparam=reparam), generator).to(dtype).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = convert_to_deploy(model)

    assert deployed.deploy and not deployed.training
    assert next(deployed.parameters()).dtype == dtype
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    x = torch.randn(2, 3, 64, 64, dtype=dtype, generator=generator)
    with torch.no_grad():
        reference, result = model(x), deployed(x)
    assert reference.abs().max() > 0
    assert (result - reference).abs().max() <= rtol * reference.abs().max()


def test_convert_rejects_deploy_model():
    with pytest.raises(ValueError):
        convert_to_deploy(repghostnet(0.5, deploy=True))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        repghostnet(0.7)
    with pytest.raises(ValueError):
        RepGhostNet(reparam="conv")


def test_randomize_bn_changes_every_bn():
    model = repghostnet(0.5)
    randomize_bn_(model, torch.Generator().manual_seed(1))
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert bool(((bn.running_var >= 0.5) & (bn.running_var <= 2.0)).all())
        assert bool(((bn.weight >= 0.5) & (bn.weight <= 1.5)).all())
        assert not torch.allclose(bn.bias, torch.zeros_like(bn.bias))


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_symbolic_trace(form):
    model = randomize_bn_(repghostnet(1.0, reparam=form[0], deploy=form[1]), torch.Generator().manual_seed(2))
    traced = symbolic_trace(model)
    model.eval()
    traced.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
