"""The ``reparam`` command line: output, options, exit codes, bad inputs, no torch needed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from reparam import cli
from test_onnx_frontend import _tiny, assert_close, counts, feed, SIZE


def call(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_path(exported, tmp_path):
    src = tmp_path / "train.onnx"
    shutil.copy(exported("torchscript", 0.5), src)
    return src


def test_fuses_prints_table_and_writes(capsys, model_path, tmp_path):
    out = tmp_path / "fused.onnx"
    code, stdout, err = call(capsys, model_path, out, "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "| BatchNormalization |" in stdout and "fired:" in stdout and "check:" in stdout
    row = next(line for line in stdout.splitlines() if line.startswith("| Add "))
    assert row.split("|")[2:4] == [f" {48:>6} ", f" {16:>6} "]
    assert "bn_branch_to_conv x32" in stdout and f"wrote {out}" in stdout
    fused = onnx.load(out)
    onnx.checker.check_model(fused, full_check=True)
    assert counts(fused)["BatchNormalization"] == 0 and counts(fused)["Add"] == 16
    for batch in (1, 8):
        assert_close(onnx.load(model_path), fused, feed((batch, 3, SIZE, SIZE)))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fired"]["merge_parallel_branches"] == 32
    assert report["ops_before"]["BatchNormalization"] == 32 and report["ops_after"].get("BatchNormalization", 0) == 0
    assert report["written"] and report["check"]["inputs"] == 3 and report["check"]["worst_ratio"] < 1e-5
    assert sorted(os.listdir(tmp_path)) == ["fused.onnx", "r.json", "train.onnx"]  # no temporaries


def test_quiet_no_check_and_version(capsys, model_path, tmp_path):
    code, stdout, err = call(capsys, model_path, tmp_path / "o.onnx", "--quiet", "--no-check")
    assert (code, stdout, err) == (0, "", "")
    code, stdout, _ = call(capsys, "--version")
    assert code == 0 and stdout.strip() == f"reparam {__import__('reparam').__version__}"
    code, stdout, _ = call(capsys, model_path, tmp_path / "o2.onnx", "--check", "0")
    assert code == 0 and "check:   skipped" in stdout


def test_verification_failure_writes_nothing(capsys, model_path, tmp_path):
    out = tmp_path / "o.onnx"
    code, stdout, err = call(capsys, model_path, out, "--rtol", "0", "--report", tmp_path / "r.json")
    assert code == 1 and not out.exists()
    assert err.count("\n") == 1 and "verification failed" in err and "tolerance 0" in err
    assert json.loads((tmp_path / "r.json").read_text())["written"] is False


def test_in_place(capsys, model_path):
    before = model_path.read_bytes()
    code, _, err = call(capsys, model_path, model_path)
    assert code == 2 and "--in-place" in err and model_path.read_bytes() == before
    code, _, err = call(capsys, model_path, "--in-place", "-q")
    assert code == 0, err
    assert counts(onnx.load(model_path))["BatchNormalization"] == 0
    assert os.listdir(model_path.parent) == ["train.onnx"]


def test_input_shape_for_dynamic_dimensions(exported, capsys, tmp_path):
    src = exported("torchscript", 0.5, dynamic_hw=True)
    out = tmp_path / "o.onnx"
    code, _, err = call(capsys, src, out)
    assert code == 2 and "--input-shape x:" in err and not out.exists()
    code, _, err = call(capsys, src, out, "--input-shape", "x:2,3,48,40")
    assert code == 0, err
    fused = onnx.load(out)
    dims = [d.dim_param for d in fused.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "", "H", "W"]
    assert_close(onnx.load(src), fused, feed((3, 3, 32, 40)))
    for bad in ("x:1,3", "y:1,3,32,32", "x:a,b", "nocolon"):
        code, _, err = call(capsys, src, tmp_path / "o3.onnx", "--input-shape", bad)
        assert code == 2 and err.count("\n") == 1, (bad, err)
    assert not (tmp_path / "o3.onnx").exists()


def _bad_inputs(exported, tmp_path):
    good = exported("torchscript", 0.5)
    (tmp_path / "text.onnx").write_text("definitely not onnx\n")
    data = open(good, "rb").read()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) * 2 // 3])
    tiny = _tiny()
    del tiny.graph.initializer[0]
    onnx.save(tiny, tmp_path / "noinit.onnx")
    onnx.save(_tiny(training_mode=1), tmp_path / "train_bn.onnx")
    (tmp_path / "adir").mkdir()
    out = tmp_path / "out.onnx"
    return [
        ([tmp_path / "missing.onnx", out], "no such file"),
        ([tmp_path / "text.onnx", out], "not an ONNX model"),
        ([tmp_path / "cut.onnx", out], "cut.onnx"),
        ([tmp_path / "noinit.onnx", out], "missing initializer"),
        ([tmp_path / "train_bn.onnx", out], "training mode"),
        ([good, good], "--in-place"),
        ([good, tmp_path / "nodir" / "out.onnx"], "does not exist"),
        ([good, tmp_path / "adir"], "is a directory"),
        ([good], "missing OUT"),
        ([good, out, "--check", "-1"], "--check"),
        ([good, out, "--bogus"], "unrecognized arguments"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_no_output(exported, capsys, tmp_path):
    for argv, needle in _bad_inputs(exported, tmp_path):
        code, stdout, err = call(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and needle in err, (argv, err)
        assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "nodir").exists()
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".reparam")]


def test_shared_weight_model_through_the_cli(capsys, tmp_path):
    from test_onnx_frontend import bn, bn_inits, helper, init, make_model, vinfo

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1", pads=[1, 1, 1, 1]), bn("bn", "a", "y"),
             helper.make_node("Conv", ["y", "w"], ["z"], name="c2", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [vinfo("x", [1, 3, 6, 6])], [vinfo("z", None)], [init("w", w)] + bn_inits("bn", 3, rng))
    onnx.save(model, tmp_path / "in.onnx")
    code, _, err = call(capsys, tmp_path / "in.onnx", tmp_path / "out.onnx", "-q")
    assert code == 0, err
    fused = onnx.load(tmp_path / "out.onnx")
    c2 = next(n for n in fused.graph.node if n.name == "c2")
    w_out = next(t for t in fused.graph.initializer if t.name == c2.input[1])
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(w_out), w.astype(np.float32))
    assert_close(model, fused, feed((1, 3, 6, 6)))


def test_progress_is_shown_only_on_a_terminal(capsys):
    p = cli._Progress(True)
    p("loading")
    p.done()
    assert "loading..." in capsys.readouterr().err
    q = cli._Progress(False)
    q("loading")
    q.done()
    assert capsys.readouterr().err == ""


def _no_torch_env(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # "import torch" raises ImportError
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shim)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_cli_and_api_work_without_torch(exported, tmp_path):
    env = _no_torch_env(tmp_path)
    src, out = exported("torchscript", 0.5), tmp_path / "o.onnx"
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0 and b"import of torch halted" in probe.stderr
    r = subprocess.run([sys.executable, "-m", "reparam", src, out], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "bn_branch_to_conv x32" in r.stdout and out.exists()
    code = ("import sys, reparam; m = reparam.fuse(sys.argv[1]); "
            "assert not any(n.op_type == 'BatchNormalization' for n in m.graph.node); "
            "assert sys.modules.get('torch') is None")
    subprocess.run([sys.executable, "-c", code, src], env=env, check=True)
    bad = subprocess.run([sys.executable, "-m", "reparam", tmp_path / "nope.onnx", tmp_path / "x.onnx"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_console_script():
    # a venv's console scripts lie beside its interpreter, whether or not the venv is activated
    exe = shutil.which("reparam", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                        os.environ.get("PATH", "")]))
    if exe is None:
        pytest.skip("the reparam console script is not installed (pip install -e .)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("reparam ")
