"""Deploying a fused model: every way the README's "Deploying the fused model" names.

A RepGhostNet-0.5x with randomized BatchNorm statistics is fused once; each test
takes the fused GraphModule through one deployment path (torch.save / torch.load of
the whole module and of its state_dict, torch.export, TorchScript, torch.onnx.export
with both exporters run by onnxruntime, torch.compile) and compares the outputs with
the original model's.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import reparam
from reparam.models import randomize_bn_, repghostnet

torch.set_num_threads(1)
WIDTH, SIZE = 0.5, 64
#: float32 inference of the fused model against the original, relative to max|reference|
RTOL = 1e-5


def _model(seed=0):
    """RepGhostNet with random weights and randomized BN statistics, the same for the same seed."""
    torch.manual_seed(seed)
    return randomize_bn_(repghostnet(width=WIDTH), torch.Generator().manual_seed(seed)).eval()


@pytest.fixture(scope="module")
def setup():
    model = _model()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    fused = reparam.fuse(model, example_inputs=x)
    with torch.no_grad():
        ref = model(x)
    return model, fused, x, ref


def assert_matches(got, ref):
    got = torch.as_tensor(got)
    assert got.shape == ref.shape
    err = ((got.double() - ref.double()).abs().max() / ref.abs().max()).item()
    assert err <= RTOL, err


def test_the_fused_model_folds_and_its_keys_are_flat(setup):
    model, fused, x, ref = setup
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    keys = list(fused.state_dict())
    assert "blocks_0_0_ghost1_cheap_operation_0.weight" in keys  # the README's example
    # every module the forward calls sits at the top level: one attribute lookup each
    called = [n.target for n in fused.graph.nodes if n.op == "call_module"]
    assert called and all("." not in t for t in called)
    # an original (training-form) checkpoint does not load into the fused model: load it first
    # (torch has copied the keys that matched, such as conv_stem.weight, when it raises)
    with pytest.raises(RuntimeError, match="Missing key"):
        copy.deepcopy(fused).load_state_dict(model.state_dict())


def test_torch_save_whole_module_needs_weights_only_false(setup, tmp_path):
    _, fused, x, ref = setup
    path = tmp_path / "fused.pt"
    torch.save(fused, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path)  # weights_only=True, the default: a GraphModule is code, not only tensors
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded, torch.fx.GraphModule) and not loaded.training
    with torch.no_grad():
        assert_matches(loaded(x), ref)
    assert loaded.reparam_report.fired == fused.reparam_report.fired


def _without_reparam(tmp_path, code):
    """Run ``code`` in a Python where ``import reparam`` fails."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text('import sys\nsys.modules["reparam"] = None\n')
    env = dict(os.environ, PYTHONPATH=str(shim), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_whole_module_loads_without_reparam_once_the_report_is_dropped(setup, tmp_path):
    _, fused, x, ref = setup
    torch.save(fused, tmp_path / "with_report.pt")
    bare = reparam.fuse(_model())
    del bare.reparam_report  # a reparam.Report: unpickling it imports reparam
    torch.save(bare, tmp_path / "bare.pt")
    torch.save((x, ref), tmp_path / "io.pt")
    assert "ModuleNotFoundError" in _without_reparam(tmp_path, "import reparam").stderr  # the shim works
    code = f"""
        import torch
        torch.set_num_threads(1)
        x, ref = torch.load({str(tmp_path / 'io.pt')!r})
        try:
            torch.load({str(tmp_path / 'with_report.pt')!r}, weights_only=False)
        except ModuleNotFoundError as e:
            print("with report:", e)
        m = torch.load({str(tmp_path / 'bare.pt')!r}, weights_only=False)
        with torch.no_grad():
            err = ((m(x) - ref).abs().max() / ref.abs().max()).item()
        print("bare:", type(m).__name__, err)
    """
    r = _without_reparam(tmp_path, code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("with report: No module named 'reparam.rewrite'"), r.stdout
    name, err = lines[1].split()[1:]
    assert name == "GraphModule" and float(err) <= RTOL


def test_state_dict_into_a_fresh_fused_copy(setup, tmp_path):
    _, fused, x, ref = setup
    torch.save(fused.state_dict(), tmp_path / "fused_sd.pt")
    state = torch.load(tmp_path / "fused_sd.pt")  # weights_only=True is enough for a state_dict
    fresh = reparam.fuse(_model(seed=1))  # same architecture, other weights: same structure
    with torch.no_grad():
        assert ((fresh(x) - ref).abs().max() / ref.abs().max()).item() > 1e-2
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert_matches(fresh(x), ref)


def test_original_checkpoint_loads_before_fusing(setup, tmp_path):
    model, _, x, ref = setup
    torch.save(model.state_dict(), tmp_path / "train.pth")
    other = _model(seed=2)
    other.load_state_dict(torch.load(tmp_path / "train.pth"), strict=True)
    with torch.no_grad():
        assert_matches(reparam.fuse(other)(x), ref)


def test_torch_export(setup, tmp_path):
    _, fused, x, ref = setup
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(fused, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "fused.pt2")
    loaded = torch.export.load(tmp_path / "fused.pt2").module()
    with torch.no_grad():
        assert_matches(loaded(x), ref)
        assert_matches(loaded(x[:1]), ref[:1])  # another batch size


def test_torchscript_script_and_trace(setup, tmp_path):
    _, fused, x, ref = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit says it is deprecated
        scripted = torch.jit.script(fused)
        with torch.no_grad():
            traced = torch.jit.trace(fused, x)
        for name, module in (("scripted", scripted), ("traced", traced)):
            torch.jit.save(module, tmp_path / f"{name}.pt")
            loaded = torch.jit.load(tmp_path / f"{name}.pt")
            with torch.no_grad():
                assert_matches(loaded(x), ref)
                assert_matches(loaded(x[:1]), ref[:1])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_torch_onnx_export_runs_in_onnxruntime(setup, tmp_path, dynamo):
    _, fused, x, ref = setup
    path = tmp_path / "fused.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's
        torch.onnx.export(fused, (x,), path, dynamo=dynamo, input_names=["x"], output_names=["y"])
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_matches(torch.from_numpy(np.asarray(y)), ref)


def test_torch_compile(setup):
    _, fused, x, ref = setup
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend="aot_eager")
    with torch.no_grad():
        assert_matches(compiled(x), ref)
    torch._dynamo.reset()
