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
from reparam.errors import BadInputError
from reparam import cli
from reparam.frontends import onnx as O
from reparam.frontends import onnx_file


@pytest.fixture
def small_model_is_large(monkeypatch):
    monkeypatch.setattr(O, "LAZY_FILE_BYTES", 0)


def test_light_load_is_onnx_load_without_the_weights(exported):
    path = exported("torchscript", 0.5)
    full = onnx.load(path)
    light = onnx_file.light_load(path, 1024)
    data = open(path, "rb").read()
    lazy = [t for t in light.graph.initializer if onnx_file.is_lazy(t)]
    assert lazy and len(light.graph.initializer) == len(full.graph.initializer)
    for t, u in zip(light.graph.initializer, full.graph.initializer, strict=True):
        if onnx_file.is_lazy(t):  # where its bytes lie, and nothing else differs
            info = {e.key: e.value for e in t.external_data}
            offset, length = int(info["offset"]), int(info["length"])
            assert len(u.raw_data) > 1024 and data[offset:offset + length] == u.raw_data
            copy = onnx.TensorProto()
            onnx_file.materialize(t, copy)
            assert copy.SerializeToString() == u.SerializeToString()
        else:
            assert t.SerializeToString() == u.SerializeToString()
    for m in (light, full):
        m.graph.ClearField("initializer")
    assert light.SerializeToString() == full.SerializeToString()


def test_light_load_leaves_external_data_and_small_models_to_onnx_load(exported, tmp_path):
    path = exported("torchscript", 0.5)
    assert onnx_file.light_load(path, 1 << 30) is None  # no initializer that large
    onnx.save(onnx.load(path), tmp_path / "ext.onnx", save_as_external_data=True,
              size_threshold=0)
    assert onnx_file.light_load(tmp_path / "ext.onnx", 0) is None


def test_light_model_out_of_order_is_checked(exported, small_model_is_large, tmp_path):
    """The checker runs on the light model, sorted (it refuses absolute file paths and
    unsorted nodes)."""
    model = onnx.load(exported("torchscript", 0.5))
    nodes = list(model.graph.node)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes[::-1])
    onnx.save(model, tmp_path / "unsorted.onnx")
    light, _ = O.load(tmp_path / "unsorted.onnx")
    assert any(onnx_file.is_lazy(t) for t in light.graph.initializer)
    bad = onnx.ModelProto()
    bad.CopyFrom(light)
    bad.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(BadInputError, match="invalid ONNX model"):
        O.validate(bad)


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


def test_folded_weights_are_freed_during_the_rewrite(exported):
    """A lifted kernel a fold replaces is freed as soon as the fold is done, without a garbage
    collection (a removed node the IR keeps for its name held its old neighbours, and with
    them every replaced weight: on RepVGG-B3, 0.9 GB more at the end of the rewrite)."""
    import gc
    import weakref

    from reparam.frontends.onnx_lift import lift
    from reparam.rewrite import run

    lifted = lift(onnx.load(exported("torchscript", 0.5)))
    kernels = {n.name: weakref.ref(n.attrs["kernel"]) for n in lifted.graph.nodes
               if n.op == "conv"}
    gc.disable()
    try:
        report = run(lifted.graph, default_rules())
        assert report.fired
        alive = {n.attrs.get("kernel") for n in lifted.graph.nodes}
        held = [name for name, ref in kernels.items() if ref() is not None and ref() not in alive]
    finally:
        gc.enable()
    assert len(kernels) > 40 and not held, held


@pytest.mark.parametrize("light", [False, "linked", "copied"])
def test_check_of_a_light_model_passes_exact_folds_and_refuses_a_wrong_one(
        exported, tmp_path, monkeypatch, capsys, light):
    """The default check runs a large model's three onnxruntime sessions (original, nudged,
    fused) on the weights in their files (through hard links, the nudged ones given to
    onnxruntime from memory), or, where no link can be made, on copies written one tensor
    at a time; it passes an exact fold and refuses one 0.1% off, as on a small model."""
    from reparam import check_run, kernel

    path = exported("torchscript", 0.5)
    nudged = []
    if light:
        monkeypatch.setattr(O, "LAZY_FILE_BYTES", 0)
        assert any(onnx_file.is_lazy(t) for t in O.load(path)[0].graph.initializer)
        if light == "copied":
            monkeypatch.setattr(check_run, "_link", lambda *args: None)
        write = check_run._write_light

        def spy(model, at):
            values = write(model, at)
            nudged.append(len(values))
            return values
        monkeypatch.setattr(check_run, "_write_light", spy)
    assert cli.main([path, str(tmp_path / "a.onnx"), "-q"]) == 0
    if light:  # the original, nudged and fused models' sessions
        assert nudged == ([0, 0, 0] if light == "copied" else [0, nudged[1], 0]) and \
            (light == "copied" or nudged[1] > 10)
    exact = kernel.add

    def off(*convs):
        k = exact(*convs)
        return k.replace(weight=k.weight * 1.001) if k else k

    monkeypatch.setattr(kernel, "add", off)
    assert cli.main([path, str(tmp_path / "b.onnx"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and "block" in err and not (tmp_path / "b.onnx").exists()


def test_lifted_weights_of_a_light_model_are_views_of_the_file(exported, small_model_is_large):
    """Lifting a light model copies no large conv weight: each conv's kernel holds its float32
    weight as a read-only view of the file's pages (folds compute in float64 from it, see
    kernel.Conv), not a float64 copy, which would double a large model in memory."""
    import mmap

    from reparam.frontends.onnx_lift import lift

    light, _ = O.load(exported("torchscript", 0.5))
    lifted = lift(light)
    large = [n.attrs["kernel"].weight for n in lifted.graph.nodes if n.op == "conv"
             and n.attrs["kernel"].ndim and n.attrs["kernel"].weight.nbytes > O.SMALL_INITIALIZER]
    assert len(large) > 10
    for w in large:
        base = w
        while isinstance(base, (np.ndarray, memoryview)):
            base = base.base if isinstance(base, np.ndarray) else base.obj
        assert w.dtype == np.float32 and not w.flags.writeable and isinstance(base, mmap.mmap)


@pytest.mark.parametrize("light", [False, True])
def test_held_weights_are_written_as_onnx_save_writes_them(exported, tmp_path, monkeypatch, light):
    """The CLI's path: the fused model's new weights (and a light model's weights it keeps)
    stay out of the proto, held as arrays, and save writes their bytes as they are: the
    file is byte for byte onnx.save's of the model reparam.fuse returns (streamed, and
    with external data)."""
    path = exported("torchscript", 0.5)
    if light:
        monkeypatch.setattr(O, "LAZY_FILE_BYTES", 0)
    model, _ = O.load(path)
    held: dict = {}
    fused, report = O.fuse_model(model, default_rules(), validated=True, held=held)
    assert report.fired and len(held) > 10
    kept_lazy = [t.name for t in model.graph.initializer if onnx_file.is_lazy(t)
                 and t.name in held]
    assert bool(kept_lazy) == light  # kept weights of a light model are held too
    for t in fused.graph.initializer:
        assert onnx_file.is_held(t) == (t.name in held)
        assert not (onnx_file.is_held(t) and t.raw_data)  # the bytes are not in the proto
    O.save(fused, tmp_path / "a.onnx", held=held)
    expected = reparam.fuse(onnx.load(path))
    onnx.save(expected, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    O.save(fused, tmp_path / "c.onnx", external=True, held=held)
    back = onnx.load(tmp_path / "c.onnx")
    assert [t.name for t in back.graph.initializer] == [t.name for t in expected.graph.initializer]
    for t, u in zip(back.graph.initializer, expected.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), onnx.numpy_helper.to_array(u))
    assert all(onnx_file.is_held(t) for t in fused.graph.initializer if t.name in held)  # unchanged


def test_folded_convs_are_settled_in_float32_during_the_rewrite(exported):
    """A conv a fold makes that nothing linear borders is rounded to float32 at once
    (reparam.rewrite.settle): a large model's float64 kernels do not pile up until it is
    written (RepVGG-B3's CLI peak: 2.1x the file without, 1.4x with). Written bit for bit as
    without it (also a random-graph property)."""
    from unittest import mock

    import reparam.rewrite
    from reparam.frontends.onnx_lift import lift
    from reparam.frontends.onnx_lower import lower
    from reparam.rewrite import run

    model = onnx.load(exported("torchscript", 0.5))
    lifted = lift(model)
    run(lifted.graph, default_rules())
    new = [n for n in lifted.graph.nodes if n.op == "conv" and n.origin is None]
    settled = [n for n in new if n.attrs["kernel"].weight.dtype == np.float32]
    assert len(settled) > 10, (len(settled), len(new))  # (the others read or feed an Add)
    assert all(n.attrs["refuse"].kind == "final" for n in settled)
    with mock.patch.object(reparam.rewrite, "settle", lambda node: False):
        plain = lift(model)
        run(plain.graph, default_rules())
    assert not any(n.attrs["kernel"].weight.dtype == np.float32 for n in plain.graph.nodes
                   if n.op == "conv" and n.origin is None)
    assert lower(lifted).SerializeToString() == lower(plain).SerializeToString()
