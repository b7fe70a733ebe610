"""Reduced precision through the ONNX frontend: float16 models fold in float64 and are cast
back; a fold whose weights would overflow float16 is refused with a warning naming the
layer, and nothing infinite is written. (The torch side: test_fuse_api.py.)"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reparam
from reparam import cli
from random_graphs import eval_onnx

C = 4
EPS = float(np.float32(1e-5))


def t16(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float16), name)


def make(nodes, inits, shape=(1, C, 6, 6)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None] * 4)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def bn(name, x, y, stats):
    return (helper.make_node("BatchNormalization", [x] + [f"{name}.{k}" for k in "sbmv"], [y], name=name,
                             epsilon=EPS),
            [t16(f"{name}.{k}", stats[k]) for k in "sbmv"])


def stats(rng, **fixed):
    s = {"s": rng.uniform(0.5, 1.5, C), "b": rng.standard_normal(C), "m": rng.standard_normal(C),
         "v": rng.uniform(0.5, 2, C)}
    s.update(fixed)
    return {k: np.asarray(v, dtype=np.float16) for k, v in s.items()}


def run_ort(model, x):
    """onnxruntime's float16 kernels on the graph as written (its own optimizations off: its
    Conv+BatchNormalization fusion would fold the overflowing weights itself)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def initializer(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_float16_conv_bn_folds_in_float64_and_is_cast_back():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((C, C, 3, 3)) / 6).astype(np.float16)
    st = stats(rng)
    node, inits = bn("bn", "c", "y", st)
    model = make([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), node],
                 [t16("w", w)] + inits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = reparam.fuse(model)
    [conv] = fused.graph.node
    assert conv.op_type == "Conv"
    got_w, got_b = initializer(fused, conv.input[1]), initializer(fused, conv.input[2])
    assert got_w.dtype == got_b.dtype == np.float16
    # the fold of the float16 parameters, computed in float64, rounded once to float16
    f = {k: v.astype(np.float64) for k, v in st.items()}
    a = f["s"] / np.sqrt(f["v"] + EPS)
    np.testing.assert_array_equal(got_w, (w.astype(np.float64) * a[:, None, None, None]).astype(np.float16))
    np.testing.assert_array_equal(got_b, (f["b"] - f["m"] * a).astype(np.float16))
    # and it computes the original function up to float16 rounding
    x = rng.standard_normal((1, C, 6, 6)).astype(np.float16)
    ref = eval_onnx(model, {"x": x})[0].numpy()  # float64 evaluation of the float16 model's values
    scale = np.abs(ref).max()
    err_orig = np.abs(run_ort(model, x).astype(np.float64) - ref).max() / scale
    err_fused = np.abs(run_ort(fused, x).astype(np.float64) - ref).max() / scale
    assert err_fused <= max(2e-3, 2 * err_orig), (err_fused, err_orig)


def test_float16_branches_merge_in_float64():
    """A RepVGG-like float16 block (3x3+BN, 1x1+BN, BN, identity) becomes one float16 conv."""
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    for name, k in (("a", 3), ("b", 1)):
        nodes.append(helper.make_node("Conv", ["x", f"{name}.w"], [f"{name}.c"], name=f"conv_{name}",
                                      pads=[k // 2] * 4))
        inits.append(t16(f"{name}.w", rng.standard_normal((C, C, k, k)) / (3 * k)))
        n, i = bn(f"bn_{name}", f"{name}.c", f"{name}.y", stats(rng))
        nodes.append(n)
        inits += i
    n, i = bn("bn_id", "x", "id.y", stats(rng))
    nodes += [n, helper.make_node("Sum", ["a.y", "b.y", "id.y", "x"], ["y"], name="sum")]
    model = make(nodes, inits + i, shape=(2, C, 6, 6))
    fused = reparam.fuse(model)
    assert [n.op_type for n in fused.graph.node] == ["Conv"]
    assert all(t.data_type == TensorProto.FLOAT16 for t in fused.graph.initializer)
    x = rng.standard_normal((2, C, 6, 6)).astype(np.float16)
    ref = eval_onnx(model, {"x": x})[0].numpy()
    scale = np.abs(ref).max()
    err_orig = np.abs(run_ort(model, x).astype(np.float64) - ref).max() / scale
    err_fused = np.abs(run_ort(fused, x).astype(np.float64) - ref).max() / scale
    assert err_fused <= max(2e-3, 2 * err_orig), (err_fused, err_orig)


def overflowing():
    """Concat(x, x) -> 1x1 conv with weights +1000 and -1000 (its output is 0) -> BN with
    variance 0: the model computes the BN's bias, but the folded weights (1000 / sqrt(eps),
    3.2e5) are past float16's largest value, 65504."""
    rng = np.random.default_rng(2)
    w = np.zeros((C, 2 * C, 1, 1))
    w[np.arange(C), np.arange(C)] = 1000.0
    w[np.arange(C), C + np.arange(C)] = -1000.0
    node, inits = bn("bn", "c", "y", stats(rng, v=np.zeros(C), m=np.zeros(C), s=np.ones(C)))
    nodes = [helper.make_node("Concat", ["x", "x"], ["xx"], name="concat", axis=1),
             helper.make_node("Conv", ["xx", "w"], ["c"], name="conv"), node]
    return make(nodes, [t16("w", w)] + inits)


def test_float16_overflow_is_refused_with_a_warning_naming_the_layer():
    model = overflowing()
    before = model.SerializeToString()
    with pytest.warns(UserWarning, match=r"bn: folded weights of conv overflow float16 .*left unfolded"):
        fused, rep = reparam.fuse(model, report=True)
    assert model.SerializeToString() == before
    assert [n.op_type for n in fused.graph.node] == ["Concat", "Conv", "BatchNormalization"]
    assert [(r.rule, r.node, r.warn) for r in rep.refused] == [("fold_conv_bn", "bn", True)]
    for t in fused.graph.initializer:
        assert np.isfinite(numpy_helper.to_array(t).astype(np.float64)).all(), t.name
    x = np.random.default_rng(3).standard_normal((1, C, 6, 6)).astype(np.float16)
    ref = run_ort(model, x)
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(run_ort(fused, x), ref)


def test_float16_overflow_through_the_cli(capfd, tmp_path):
    """Written, with one warning line naming the layer. (``--no-check``: onnxruntime's default
    graph optimizations fold this Conv and BatchNormalization themselves, in float16, and the
    original model then computes NaN in the check.)"""
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(overflowing(), src)
    assert cli.main([str(src), str(out), "-q", "--no-check"]) == 0
    stdout, err = capfd.readouterr()
    assert stdout == ""
    assert err.splitlines() == ["reparam: warning: bn: folded weights of conv overflow float16 "
                                "(largest magnitude 3.16e+05); left unfolded"]
    fused = onnx.load(out)
    assert [n.op_type for n in fused.graph.node] == ["Concat", "Conv", "BatchNormalization"]
    assert all(np.isfinite(numpy_helper.to_array(t).astype(np.float64)).all() for t in fused.graph.initializer)


def test_bfloat16_model_keeps_its_type():
    """bfloat16 ONNX models (numpy has no bfloat16) are not folded today; whatever is done with
    them, the result is a valid model whose tensors are still bfloat16."""
    rng = np.random.default_rng(4)

    def bf16(name, a):
        a = np.asarray(a, dtype=np.float32)
        return helper.make_tensor(name, TensorProto.BFLOAT16, a.shape, a.ravel().tolist())

    st = stats(rng)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, C, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [None] * 4)],
                              [bf16("w", rng.standard_normal((C, C, 3, 3)))] + [bf16(k, st[k]) for k in "sbmv"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])  # Conv-22 takes bfloat16
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    fused = reparam.fuse(model)
    onnx.checker.check_model(fused, full_check=True)
    assert {t.data_type for t in fused.graph.initializer} == {TensorProto.BFLOAT16}
    assert fused.graph.input == model.graph.input and fused.graph.output == model.graph.output
