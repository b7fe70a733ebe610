"""The benchmark suite runs: ``benchmarks/run.py --quick`` writes its tables and plots.

A smoke test only (tiny models and inputs, a few iterations, well under a
minute): it checks that every section runs end to end - torch eager and
onnxruntime latency, the ``reparam`` CLI on exports, the fusing-cost workers
and the numerical-error comparison - and that the report and the plots are
written, not what the numbers are.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")  # every benchmark measures torch models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_report_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("onnxruntime")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["cost.png", "latency.png", "latest.json", "latest.md"]
    text = (tmp_path / "latest.md").read_text()
    for heading in ("### Inference latency", "### Fusing cost", "### Numerical error"):
        assert heading in text
    for row in ("| RepGhostNet-0.5x | 1 |", "| RepVGG | 2 |", "| reparam.fuse |", "| 32 x 3 |"):
        assert row in text, row
    assert "![latency](./latency.png)" in text
    for png in ("latency.png", "cost.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sections_and_bad_section(tmp_path):
    run = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--out",
           str(tmp_path)]
    r = subprocess.run(run + ["--sections", "error"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (tmp_path / "latest.md").read_text()
    assert "### Numerical error" in text and "### Inference latency" not in text
    r = subprocess.run(run + ["--sections", "speed"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "unknown section" in r.stderr
