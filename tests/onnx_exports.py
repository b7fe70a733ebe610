"""RepGhostNet exported to ONNX by both torch exporters, once per test session.

The ``exported`` fixture (``tests/conftest.py``) is a :class:`RepGhostNetExports` whose
files lie in a session directory of pytest's ``tmp_path_factory``, which pytest removes.
"""
from __future__ import annotations

import os
import warnings

import pytest

SIZE = 64  # spatial input size of the exported RepGhostNets (export time does not depend on it)
EXPORTERS = ("torchscript", "torchscript-nofold", "dynamo", "dynamo-noopt")


def need_exporter(exporter: str) -> None:
    """Skip the calling test when ``exporter`` needs a package that is not installed: the
    torch.export-based ("dynamo") exporter needs onnxscript (in the ``test`` extra). The
    reason starts with "could not import", as importorskip's own: CI fails on such skips."""
    if exporter.startswith("dynamo"):
        pytest.importorskip("onnxscript", reason="could not import 'onnxscript', which the "
                                                 "torch.export ONNX exporter needs (test extra)")


def export(model, path, exporter, dynamic_hw=False):
    torch = pytest.importorskip("torch")
    need_exporter(exporter)
    x = torch.randn(1, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter.startswith("torchscript"):
            axes = {0: "N", 2: "H", 3: "W"} if dynamic_hw else {0: "N"}
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": axes, "y": {0: "N"}},
                              do_constant_folding=exporter == "torchscript")
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"],
                              output_names=["y"], optimize=exporter == "dynamo",
                              dynamic_shapes=({0: torch.export.Dim("N", max=64)},), verbose=False)
    return path


def repghost(width, seed=0):
    torch = pytest.importorskip("torch")

    from reparam.models.repghost import randomize_bn_, repghostnet

    torch.manual_seed(seed)
    return randomize_bn_(repghostnet(width), torch.Generator().manual_seed(seed)).eval()


class RepGhostNetExports:
    """``exports(exporter, width, deploy=False, dynamic_hw=False)``: the path of
    RepGhostNet-``width`` (training form, or its deploy form) exported by ``exporter``
    into ``directory``, exported on first use and cached."""

    def __init__(self, directory):
        self.directory = str(directory)
        self._paths: dict = {}

    def __call__(self, exporter: str, width: float, deploy: bool = False,
                 dynamic_hw: bool = False) -> str:
        pytest.importorskip("torch")
        need_exporter(exporter)
        key = (exporter, width, deploy, dynamic_hw)
        if key not in self._paths:
            from reparam.models.repghost import convert_to_deploy

            model = repghost(width)
            if deploy:
                model = convert_to_deploy(model).eval()
            name = f"{exporter}-{width}{'-deploy' if deploy else ''}{'-hw' if dynamic_hw else ''}.onnx"
            self._paths[key] = export(model, os.path.join(self.directory, name), exporter, dynamic_hw)
        return self._paths[key]
