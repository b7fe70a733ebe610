"""Smoke tests: the RepGhostNet demo and benchmark scripts run with tiny settings."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the whole module needs torch

from reparam.models import convert_to_deploy, repghostnet

ROOT = Path(__file__).resolve().parent.parent


def run_script(relative_path, *args):
    result = subprocess.run(
        [sys.executable, str(ROOT / relative_path), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def table_row(output, label):
    """Cells of the markdown row whose first cell is ``label``."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no {label!r} row in:\n{output}")


def test_demo_runs_and_fuses_every_bn():
    out = run_script("examples/repghostnet.py", "--runs", "2", "--image-size", "64",
                     "--calib-size", "64", "--calib-steps", "2")
    deploy_convs = sum(isinstance(m, torch.nn.Conv2d) for m in convert_to_deploy(repghostnet()).modules())
    _original, fused_convs, table_deploy_convs = table_row(out, "convs")
    assert int(fused_convs) == int(table_deploy_convs) == deploy_convs
    assert int(table_row(out, "BNs")[1]) == 0
    assert "fold_conv_bn" in out  # the report is printed
    # fusing alone and fusing + verification are timed and labelled apart
    assert re.search(r"^reparam\.fuse\(model\), fusing alone: \d+\.\d+ s on the first call \(includes "
                     r"one-time warm-up\), \d+\.\d+ s warm", out, re.M), out
    assert re.search(r"^reparam\.fuse\(model, example_inputs=x\), fusing \+ verification: \d+\.\d+ s "
                     r"\(also runs the original and the fused model on x of shape \(2, 3, 64, 64\)", out, re.M), out
    # refusals are explained as candidates left as they are, not as failures
    assert re.search(r"^\d+ candidates were refused: left as they are, not a failure, because folding "
                     r"them would cost more than the layers they replace", out, re.M), out


def test_benchmark_prints_ratios():
    out = run_script("benchmarks/bench_repghostnet.py", "--iters", "2", "--warmup", "1",
                     "--fuse-runs", "1", "--image-size", "64")
    assert re.search(r"\| fused / deploy latency \| \d+\.\d+ \|", out), out
    assert re.search(r"\| training graph / deploy latency \| \d+\.\d+ \|", out), out
    assert re.search(r"\| reparam.fuse wall time \(s\) \| \d+\.\d+ \|", out), out
