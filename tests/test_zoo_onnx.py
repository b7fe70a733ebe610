"""The test zoo through ONNX: each case exported in training form, then fused.

For every family and case of ``tests/zoo`` (randomized BatchNorms, eval mode),
exported by torch's TorchScript exporter (which already folds Conv+BN and
leaves BN-only branches as BatchNormalization) and by the torch.export-based
exporter (BN not folded), the CLI (``reparam IN OUT``, with its own onnxruntime
check) must write a model with as many Conv nodes as
the family's hand-converted deploy form has convolutions, no
BatchNormalization, and onnxruntime outputs matching the original export's
within 1e-5 relative (``max|diff| <= 1e-5 * max|ref|``).
"""
from __future__ import annotations

import os
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")  # the whole module needs torch

from reparam.cli import main
from onnx_exports import need_exporter
from test_zoo import CASES, FAMILIES, get


def export(model, x, exporter: str, directory) -> str:
    need_exporter(exporter)
    path = os.path.join(directory, f"{id(model)}-{exporter}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=exporter == "dynamo", input_names=["x"],
                          output_names=["y"])
    return path


def run(model_or_path, x: np.ndarray) -> np.ndarray:
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("family,case", CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_onnx_export_fuses_to_deploy_structure(family, case, exporter, tmp_path):
    model, x = get(family, case)
    path = export(model, x, exporter, tmp_path)
    out = path[:-5] + "-fused.onnx"
    assert main([path, out, "--check", "2", "--quiet", "--report", out + ".json"]) == 0
    fused = onnx.load(out)
    ops = Counter(n.op_type for n in fused.graph.node)
    expected = FAMILIES[family].deploy_conv_count(model)
    report = open(out + ".json").read()
    assert ops["Conv"] == expected, (ops, report)
    assert ops["BatchNormalization"] == 0, report
    xn = x.numpy()
    ref, got = run(path, xn), run(fused, xn)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
