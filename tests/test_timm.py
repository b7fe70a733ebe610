"""timm's Rep-style models (one per family) through ``reparam.fuse``, against timm's own
conversion (``timm.utils.model.reparameterize_model``); the full sweep of every model of the
families is ``python benchmarks/timm_sweep.py`` (results in the README)."""
import os
import sys

import pytest

pytest.importorskip("timm", reason="timm is not installed (it comes with the test extra)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import timm_sweep  # noqa: E402


@pytest.mark.parametrize("name", timm_sweep.CI_MODELS)
def test_timm_model_folds_to_deploy_form(name):
    r = timm_sweep.check(name, timing=False)
    assert r.unchanged, "reparam.fuse changed the input model"
    assert not r.unexplained, f"conv/BN layers left without a reason: {r.unexplained}"
    for op in timm_sweep.OPS:  # what timm folds, reparam folds
        assert r.fused_ops[op] <= r.deploy_ops[op], (op, r.fused_ops, r.deploy_ops)
    assert r.fused_ops["Conv"] == r.deploy_ops["Conv"] and r.fused_ops["BatchNormalization"] == 0
    assert r.error <= max(1e-6, 2 * r.own_error), (r.error, r.own_error)
