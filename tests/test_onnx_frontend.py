"""The ONNX frontend: RepGhostNet exported by both torch exporters, hand-built graphs
for every supported operator, faithfulness of what is not folded, bad inputs.

RepGhostNet exports come from the session-scoped ``exported`` fixture (tests/conftest.py),
shared with test_cli.py and test_onnx_lazy.py.
The sweep over every RepGhostNet width is marked ``slow`` (deselect with ``-m "not slow"``).
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reparam
from reparam.errors import BadInputError
from reparam.frontends import onnx as fe
from reparam.passes import DEFAULT_RULES as RULES
from onnx_exports import SIZE  # noqa: F401 (shared with test_cli.py)


# --- helpers ----------------------------------------------------------------------------

def counts(model):
    return Counter(n.op_type for n in model.graph.node)


def run(model, feed):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(None, feed)


def assert_close(reference, fused, feed, rtol=1e-5):
    for r, g in zip(run(reference, feed), run(fused, feed)):
        assert r.shape == g.shape
        scale = np.abs(r).max()
        assert np.abs(g.astype(np.float64) - r).max() <= rtol * scale, (
            np.abs(g.astype(np.float64) - r).max(), scale)


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def vinfo(name, shape, elem=TensorProto.FLOAT):
    """A tensor value info; ``shape=None``: rank 4, sizes left to shape inference."""
    return helper.make_tensor_value_info(name, elem, [None] * 4 if shape is None else shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def bn_inits(prefix, c, rng):
    return [init(f"{prefix}.s", rng.uniform(0.5, 1.5, c)), init(f"{prefix}.b", 0.1 * rng.standard_normal(c)),
            init(f"{prefix}.m", rng.standard_normal(c)), init(f"{prefix}.v", rng.uniform(0.5, 2, c))]


def bn(prefix, x, y, **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in "sbmv"], [y],
                            name=prefix, **attrs)


def fuse(model, rules=RULES):
    fused, rep = reparam.fuse(model, rules=rules, report=True)
    onnx.checker.check_model(fused, full_check=True)
    return fused, rep


def feed(shape, seed=1, name="x"):
    return {name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


# --- RepGhostNet, both exporters --------------------------------------------------------

def check_repghostnet(exported, exporter, width):
    path = exported(exporter, width)
    original = onnx.load(path)
    fused, rep = reparam.fuse(path, report=True)
    assert isinstance(fused, onnx.ModelProto) and not hasattr(fused, "reparam_report")
    onnx.checker.check_model(fused, full_check=True)
    c = counts(fused)
    deploy_convs = counts(onnx.load(exported("torchscript", width, deploy=True)))["Conv"]
    assert c["BatchNormalization"] == 0
    assert c["Conv"] == deploy_convs
    assert c["Add"] == 16  # the bottleneck shortcuts
    assert c["Identity"] == 0
    assert rep.fired["merge_parallel_branches"] == 32 and rep.fired["bn_branch_to_conv"] == 32
    assert rep.before == counts(original) and rep.after == c
    # graph interface, opsets and metadata are kept; the batch dimension stays dynamic
    assert fused.graph.input == original.graph.input
    assert fused.graph.output == original.graph.output
    assert fused.opset_import == original.opset_import
    assert fused.metadata_props == original.metadata_props
    assert (fused.ir_version, fused.producer_name) == (original.ir_version, original.producer_name)
    assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    # untouched nodes keep names and contents (inputs may read renamed tensors)
    by_name = {n.name: n for n in fused.graph.node}
    for n in original.graph.node:
        if n.op_type in ("Relu", "Gemm", "HardSigmoid", "GlobalAveragePool", "ReduceMean", "Mul", "Flatten"):
            kept = by_name[n.name]
            assert (kept.op_type, kept.attribute, kept.output) == (n.op_type, n.attribute, n.output)
    for batch in (1, 8):
        assert_close(original, fused, feed((batch, 3, SIZE, SIZE)), rtol=1e-5)
    return fused


@pytest.mark.parametrize("exporter,width", [("torchscript", 0.5), ("torchscript", 1.0),
                                            ("torchscript-nofold", 0.5), ("dynamo", 0.5),
                                            ("dynamo-noopt", 1.0)])
def test_repghostnet_export_fuses_like_deploy(exported, exporter, width):
    fused = check_repghostnet(exported, exporter, width)
    if exporter == "dynamo-noopt":  # the zero biases it computes with Shape/Expand are folded away
        assert counts(fused)["Expand"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "torchscript-nofold", "dynamo"])
@pytest.mark.parametrize("width", [0.5, 0.58, 0.8, 1.0, 1.11, 1.3, 1.5, 2.0])
def test_repghostnet_every_width(exported, exporter, width):
    check_repghostnet(exported, exporter, width)


def test_nofold_export_folds_conv_bn_too(exported):
    _, rep = reparam.fuse(exported("torchscript-nofold", 0.5), report=True)
    assert rep.before["BatchNormalization"] == 112 and rep.after["BatchNormalization"] == 0
    assert rep.fired["fold_conv_bn"] == 80


def test_fused_matches_deploy_model(exported):
    """The fused training export computes what the deploy export computes."""
    fused = reparam.fuse(exported("torchscript", 0.5))
    deploy = onnx.load(exported("torchscript", 0.5, deploy=True))
    assert_close(deploy, fused, feed((2, 3, SIZE, SIZE)), rtol=1e-5)


def test_input_proto_is_not_modified(exported):
    model = onnx.load(exported("torchscript", 0.5))
    before = model.SerializeToString()
    fused = reparam.fuse(model)
    assert model.SerializeToString() == before
    assert counts(fused)["BatchNormalization"] == 0


def test_fusing_twice_changes_nothing(exported):
    once = reparam.fuse(exported("torchscript", 0.5))
    twice, rep = reparam.fuse(once, report=True)
    assert not rep.fired and counts(twice) == counts(once)


def test_example_inputs_verify_with_onnxruntime(exported):
    path = exported("torchscript", 0.5)
    fused = reparam.fuse(path, example_inputs=[feed((1, 3, SIZE, SIZE))], rtol=1e-5)
    assert counts(fused)["BatchNormalization"] == 0
    with pytest.raises(reparam.VerificationError):
        reparam.fuse(path, example_inputs=feed((1, 3, SIZE, SIZE)), rtol=0.0)


# --- hand-built graphs ------------------------------------------------------------------

def test_conv_bn_add_identity_either_order_and_chains():
    rng = np.random.default_rng(0)
    c = 8
    nodes = [
        helper.make_node("Conv", ["x", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        bn("bn3", "c3", "b3"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        bn("bn1", "c1", "b1"),
        bn("bnid", "x", "bid"),
        helper.make_node("Add", ["b1", "b3"], ["s1"], name="add1"),        # conv branches
        helper.make_node("Add", ["bid", "s1"], ["s2"], name="add2"),       # BN branch first
        helper.make_node("Add", ["s2", "x"], ["y"], name="add3"),          # identity last
    ]
    inits = [init("w3", rng.standard_normal((c, c, 3, 3))), init("w1", rng.standard_normal((c, c, 1, 1)))]
    inits += bn_inits("bn3", c, rng) + bn_inits("bn1", c, rng) + bn_inits("bnid", c, rng)
    model = make_model(nodes, [vinfo("x", ["N", c, 10, 10])], [vinfo("y", ["N", c, 10, 10])], inits)
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1}
    assert [o.name for o in fused.graph.output] == ["y"] and fused.graph.node[0].output == ["y"]
    assert fused.graph.input == model.graph.input
    for batch in (1, 8):
        assert_close(model, fused, feed((batch, c, 10, 10)))


@pytest.mark.parametrize("groups,dilation,pads,stride", [
    (1, 1, [0, 1, 2, 1], 1),   # explicit asymmetric pads
    (4, 2, [2, 2, 2, 2], 1),   # groups and dilation
    (8, 1, [1, 0, 1, 0], 2),   # depthwise, stride 2, asymmetric
])
def test_conv_attributes_fold_with_bn(groups, dilation, pads, stride):
    rng = np.random.default_rng(1)
    c = 8
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=groups,
                              dilations=[dilation] * 2, pads=pads, strides=[stride] * 2),
             bn("bn", "c", "y")]
    inits = [init("w", rng.standard_normal((c, c // groups, 3, 3))), init("b", rng.standard_normal(c))]
    model = make_model(nodes, [vinfo("x", [1, c, 11, 12])], [vinfo("y", None)], inits + bn_inits("bn", c, rng))
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1} and rep.fired["fold_conv_bn"] == 1
    assert_close(model, fused, feed((1, c, 11, 12)))


@pytest.mark.parametrize("auto_pad,stride", [("SAME_UPPER", 1), ("SAME_LOWER", 1), ("SAME_UPPER", 2),
                                             ("SAME_LOWER", 2), ("VALID", 1)])
def test_conv_auto_pad_folds(auto_pad, stride):
    rng = np.random.default_rng(2)
    c = 4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", auto_pad=auto_pad,
                              strides=[stride, stride]),
             bn("bn", "c", "y")]
    inits = [init("w", rng.standard_normal((c, c, 4, 3)))]
    model = make_model(nodes, [vinfo("x", [1, c, 9, 10])], [vinfo("y", None)], inits + bn_inits("bn", c, rng))
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1}
    assert_close(model, fused, feed((1, c, 9, 10)))


def test_auto_pad_same_strided_on_dynamic_size_is_kept_with_a_note():
    rng = np.random.default_rng(2)
    c = 4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", auto_pad="SAME_UPPER", strides=[2, 2]),
             bn("bn", "c", "y")]
    model = make_model(nodes, [vinfo("x", [1, c, "H", "W"])], [vinfo("y", None)],
                       [init("w", rng.standard_normal((c, c, 3, 3)))] + bn_inits("bn", c, rng))
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1, "BatchNormalization": 1}
    assert any("depends on the input size" in n for n in rep.notes)


def test_weights_from_constant_nodes():
    rng = np.random.default_rng(3)
    c = 6
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], name="cw", value=numpy_helper.from_array(w)),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bn("bn", "c", "b"),
             bn("bnid", "x", "i"),
             helper.make_node("Add", ["i", "b"], ["y"], name="add")]
    model = make_model(nodes, [vinfo("x", [1, c, 7, 7])], [vinfo("y", None)],
                       bn_inits("bn", c, rng) + bn_inits("bnid", c, rng))
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1}  # the Constant only fed the folded conv
    assert_close(model, fused, feed((1, c, 7, 7)))


def test_shared_conv_weight_is_neither_corrupted_nor_copied():
    """Three convs read one initializer: folding the BN after one of them would write a
    copy of the weight while the others keep reading it (issue 14): refused for cost, the
    weight stays intact and the output holds no more weight values than the input."""
    rng = np.random.default_rng(4)
    c = 5
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             bn("bn1", "c1", "y1"),
             helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             bn("bn2", "c2", "b2"),
             helper.make_node("Relu", ["b2"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["y2"], name="conv3", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [vinfo("x", [1, c, 6, 6])], [vinfo("y1", None), vinfo("y2", None)],
                       [init("w", w)] + bn_inits("bn1", c, rng) + bn_inits("bn2", c, rng))
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 3, "BatchNormalization": 2, "Relu": 1}
    assert [r.kind for r in rep.refused if r.rule == "fold_conv_bn"] == ["cost", "cost"]
    assert sum(t.ByteSize() for t in fused.graph.initializer) <= \
        sum(t.ByteSize() for t in model.graph.initializer)
    kept = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    np.testing.assert_array_equal(kept["w"], w)  # conv3 still reads the original weight
    assert next(n for n in fused.graph.node if n.name == "conv3").input[1] == "w"
    assert numpy_helper.to_array(model.graph.initializer[0]).tobytes() == w.tobytes()
    assert_close(model, fused, feed((1, c, 6, 6)))


def test_pad_is_absorbed_into_conv_padding():
    rng = np.random.default_rng(5)
    c = 4
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=[1, 0, 0, 1], strides=[2, 1])]
    pads = numpy_helper.from_array(np.array([0, 0, 2, 1, 0, 0, 0, 3], dtype=np.int64), "pads")
    model = make_model(nodes, [vinfo("x", [2, c, 9, 8])], [vinfo("y", None)],
                       [pads, init("w", rng.standard_normal((c, c, 3, 3)))])
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1} and rep.fired["absorb_zero_pad"] == 1
    assert_close(model, fused, feed((2, c, 9, 8)))
    # a non-zero constant value, or padding of the channels, is not a conv's padding
    model.graph.node[0].input.append("val")
    model.graph.initializer.append(init("val", 0.5))
    fused, _ = fuse(model)
    assert counts(fused) == {"Pad": 1, "Conv": 1}
    assert_close(model, fused, feed((2, c, 9, 8)))


def test_averagepool_branch_merges_only_when_padding_counts():
    rng = np.random.default_rng(6)
    c = 4

    def build(count_include_pad):
        nodes = [helper.make_node("AveragePool", ["x"], ["a"], name="pool", kernel_shape=[3, 3],
                                  pads=[1, 1, 1, 1], count_include_pad=count_include_pad),
                 helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 bn("bn", "c", "b"),
                 helper.make_node("Add", ["a", "b"], ["s"], name="add"),
                 helper.make_node("Add", ["s", "x"], ["y"], name="add2")]
        return make_model(nodes, [vinfo("x", [1, c, 8, 8])], [vinfo("y", None)],
                          [init("w", rng.standard_normal((c, c, 3, 3)))] + bn_inits("bn", c, rng))

    model = build(1)
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1}
    assert_close(model, fused, feed((1, c, 8, 8)))
    model = build(0)
    fused, rep = fuse(model)
    assert counts(fused)["AveragePool"] == 1 and counts(fused)["Add"] == 1
    assert any("count_include_pad=0" in n for n in rep.notes)
    assert_close(model, fused, feed((1, c, 8, 8)))


@pytest.mark.parametrize("op,const_first", [("Mul", False), ("Mul", True), ("Div", False),
                                            ("Sub", False), ("Sub", True), ("Add", True)])
def test_per_channel_layer_scale_folds(op, const_first):
    rng = np.random.default_rng(7)
    c = 6
    gamma = init("gamma", rng.uniform(0.5, 2, (c, 1, 1)))
    ins = ["gamma", "c"] if const_first else ["c", "gamma"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ins, ["s"], name="scale"),
             helper.make_node("Add", ["x", "s"], ["y"], name="residual")]
    model = make_model(nodes, [vinfo("x", ["N", c, 5, 5])], [vinfo("y", ["N", c, 5, 5])],
                       [init("w", rng.standard_normal((c, c, 3, 3))), init("b", rng.standard_normal(c)), gamma])
    fused, rep = fuse(model)
    assert counts(fused) == {"Conv": 1}
    assert_close(model, fused, feed((3, c, 5, 5)))


def test_non_per_channel_constants_and_divisor_tensors_stay():
    rng = np.random.default_rng(8)
    c = 3
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "spatial"], ["m"], name="mul_spatial"),  # varies over H, W
             helper.make_node("Div", ["one", "m"], ["y"], name="reciprocal")]      # not linear in m
    model = make_model(nodes, [vinfo("x", [1, c, 4, 4])], [vinfo("y", None)],
                       [init("w", rng.standard_normal((c, c, 1, 1))), init("spatial", rng.uniform(1, 2, (4, 4))),
                        init("one", [1.0])])
    fused, rep = fuse(model)
    assert counts(fused) == counts(model) and not rep.fired


def test_multi_output_nodes_are_kept_and_rewired():
    rng = np.random.default_rng(9)
    c = 4
    nodes = [helper.make_node("Split", ["x", "split"], ["s0", "s1"], name="split", axis=1),
             helper.make_node("Conv", ["s0", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bn("bn", "c", "b"),
             bn("bnid", "s0", "i"),
             helper.make_node("Add", ["b", "i"], ["a"], name="add"),
             helper.make_node("Concat", ["a", "s1"], ["y"], name="concat", axis=1)]
    model = make_model(nodes, [vinfo("x", [1, 2 * c, 5, 5])], [vinfo("y", None)],
                       [numpy_helper.from_array(np.array([c, c], dtype=np.int64), "split"),
                        init("w", rng.standard_normal((c, c, 3, 3)))]
                       + bn_inits("bn", c, rng) + bn_inits("bnid", c, rng))
    fused, rep = fuse(model)
    assert counts(fused) == {"Split": 1, "Conv": 1, "Concat": 1}
    assert_close(model, fused, feed((1, 2 * c, 5, 5)))


def test_output_of_a_dropped_identity_keeps_its_name():
    c = 3
    rng = np.random.default_rng(10)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Identity", ["c"], ["y"], name="id"),
             helper.make_node("Relu", ["c"], ["z"], name="relu")]
    model = make_model(nodes, [vinfo("x", [1, c, 4, 4])], [vinfo("y", None), vinfo("z", None)],
                       [init("w", rng.standard_normal((c, c, 1, 1)))])
    fused, rep = fuse(model)
    assert [o.name for o in fused.graph.output] == ["y", "z"]
    assert_close(model, fused, feed((1, c, 4, 4)))


def test_subgraph_reading_a_folded_tensor_by_name():
    rng = np.random.default_rng(11)
    c = 3
    then = helper.make_graph([helper.make_node("Relu", ["a"], ["t"])], "then", [], [vinfo("t", None)])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [], [vinfo("e", None)])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             bn("bn", "c", "a"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    model = make_model(nodes, [vinfo("x", [1, c, 4, 4]), vinfo("cond", [], TensorProto.BOOL)],
                       [vinfo("y", None)], [init("w", rng.standard_normal((c, c, 1, 1)))] + bn_inits("bn", c, rng))
    fused, rep = fuse(model)
    assert rep.fired["fold_conv_bn"] == 1
    for cond in (True, False):
        f = {**feed((1, c, 4, 4)), "cond": np.array(cond)}
        assert_close(model, fused, f)


def test_float64_and_float16_models():
    rng = np.random.default_rng(12)
    c = 4
    from onnx.reference import ReferenceEvaluator  # onnxruntime's CPU Conv is float32 only

    for elem, dt, tol in ((TensorProto.DOUBLE, np.float64, 1e-12), (TensorProto.FLOAT16, np.float16, 1e-2)):
        def t(name, a):
            return numpy_helper.from_array(np.asarray(a, dtype=dt), name)
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")]
        inits = [t("w", rng.standard_normal((c, c, 3, 3))), t("s", rng.uniform(0.5, 1.5, c)),
                 t("b", rng.standard_normal(c)), t("m", rng.standard_normal(c)), t("v", rng.uniform(0.5, 2, c))]
        model = make_model(nodes, [vinfo("x", [1, c, 5, 5], elem)], [vinfo("y", None, elem)], inits)
        fused, _ = fuse(model)
        assert counts(fused) == {"Conv": 1}
        assert fused.graph.initializer[-1].data_type == elem
        x = {"x": rng.standard_normal((1, c, 5, 5)).astype(dt)}
        r, g = ReferenceEvaluator(model).run(None, x)[0], ReferenceEvaluator(fused).run(None, x)[0]
        assert g.dtype == dt
        assert np.abs(g.astype(np.float64) - r).max() <= tol * np.abs(r).max()


def test_external_data_is_read_and_written(exported, tmp_path):
    model = onnx.load(exported("torchscript", 0.5))
    src = tmp_path / "ext.onnx"
    onnx.save(model, src, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    model = onnx.load(exported("torchscript", 0.5))  # save_as_external_data rewrote it
    loaded, external = fe.load(src)
    assert external
    fused = reparam.fuse(src)
    out = tmp_path / "out.onnx"
    fe.save(fused, out, external=True)
    assert os.path.getsize(out) < os.path.getsize(tmp_path / "out.onnx.data") / 10
    again = onnx.load(out)
    assert counts(again) == counts(fused)
    assert_close(model, again, feed((1, 3, SIZE, SIZE)))
    assert sorted(os.listdir(tmp_path)) == ["ext.onnx", "ext.onnx.data", "out.onnx", "out.onnx.data"]


# --- bad inputs -----------------------------------------------------------------------------

def _tiny(**bn_attrs):
    rng = np.random.default_rng(13)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn("bn", "c", "y", **bn_attrs)]
    return make_model(nodes, [vinfo("x", [1, 2, 3, 3])], [vinfo("y", None)],
                      [init("w", rng.standard_normal((2, 2, 1, 1)))] + bn_inits("bn", 2, rng))


def test_training_mode_batchnorm_is_bad_input():
    model = _tiny(training_mode=1)
    with pytest.raises(BadInputError, match="training mode"):
        reparam.fuse(model)


def test_missing_initializer_is_bad_input():
    model = _tiny()
    del model.graph.initializer[0]
    with pytest.raises(BadInputError, match="'w'.*missing initializer"):
        reparam.fuse(model)


def test_unreadable_files_are_bad_input(exported, tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        reparam.fuse(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("this is not a protobuf\n")
    with pytest.raises(BadInputError, match="not an ONNX model"):
        reparam.fuse(str(tmp_path / "text.onnx"))
    data = onnx.load(exported("torchscript", 0.5)).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        reparam.fuse(tmp_path / "cut.onnx")


def test_import_reparam_imports_neither_onnx_nor_torch():
    import subprocess
    import sys

    code = "import sys, reparam; assert 'onnx' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
