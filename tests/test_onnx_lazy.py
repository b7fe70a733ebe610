"""Large ONNX files are loaded light (weights read from the file on demand) and written
streamed: the results are byte for byte those of the in-memory path.

The thresholds (64 MiB) are lowered here so that a small RepGhostNet export takes
the large-file paths of :mod:`reparam.frontends.onnx_file` and ``save``.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import reparam
from reparam.api import default_rules
from reparam import cli
from reparam.frontends import onnx as O
from reparam.frontends import onnx_file


@pytest.fixture
def small_model_is_large(monkeypatch):
    monkeypatch.setattr(O, "LAZY_FILE_BYTES", 0)


def test_raw_data_spans_point_at_the_bytes(exported):
    path = exported("torchscript", 0.5)
    model = onnx.load(path)
    spans = onnx_file.raw_data_spans(path)
    data = open(path, "rb").read()
    raw = [t for t in model.graph.initializer if t.raw_data]
    assert raw and set(spans) == {t.name for t in raw}
    for t in raw:
        offset, length = spans[t.name]
        assert data[offset:offset + length] == t.raw_data


def test_light_model_fuses_like_the_full_one(exported, small_model_is_large):
    path = exported("torchscript", 0.5)
    light, external = O.load(path)
    assert not external
    lazy = [t for t in light.graph.initializer if onnx_file.is_lazy(t)]
    assert lazy and all(not t.raw_data for t in lazy)
    full = onnx.load(path)
    for t in lazy:
        original = next(u for u in full.graph.initializer if u.name == t.name)
        np.testing.assert_array_equal(onnx_file.read(t), onnx.numpy_helper.to_array(original))
        copy = onnx.TensorProto()
        onnx_file.materialize(t, copy)
        assert copy.SerializeToString() == original.SerializeToString()
    fused_light, rep_light = O.fuse_model(light, default_rules(), validated=True)
    fused_full, rep_full = O.fuse_model(full, default_rules())
    assert fused_light.SerializeToString() == fused_full.SerializeToString()
    assert rep_light.fired == rep_full.fired and rep_light.fired
    assert not any(onnx_file.is_lazy(t) for t in fused_light.graph.initializer)


def test_fuse_path_with_example_inputs(exported, small_model_is_large):
    path = exported("torchscript", 0.5)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    fused = reparam.fuse(path, example_inputs={"x": x})
    assert fused.SerializeToString() == reparam.fuse(onnx.load(path)).SerializeToString()


def test_cli_output_is_the_same(exported, tmp_path, monkeypatch):
    path = exported("torchscript", 0.5)
    assert cli.main([path, str(tmp_path / "a.onnx"), "-q"]) == 0
    monkeypatch.setattr(O, "LAZY_FILE_BYTES", 0)  # light load and streamed save
    assert cli.main([path, str(tmp_path / "b.onnx"), "-q"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_streamed_save_is_onnx_save(exported, tmp_path):
    model = reparam.fuse(exported("torchscript", 0.5))
    model.doc_string = "after the graph"  # ModelProto fields on both sides of the graph
    model.graph.doc_string = "and inside it"
    onnx.helper.set_model_props(model, {"k": "v"})
    O._save_streamed(model, tmp_path / "a.onnx")
    onnx.save(model, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
