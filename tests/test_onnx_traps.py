"""ONNX models that are valid but easy to get wrong (issue 14's trap corpus).

Each case goes through the CLI with its default check, the CLI with ``--no-check`` and
``reparam.fuse(proto)``; every result must pass the ONNX checker with full checks and
compute what the original computes on feeds of every input, overridable initializers
included (onnxruntime, or the ONNX reference evaluator for float64), and what can be
folded must be folded. Further cases: the check itself (a fold corrupted on purpose is
always refused, exact folds of ill-conditioned models never are, an onnxruntime failure
on the fused model is a verification failure).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reparam
from reparam import cli

RNG = np.random.default_rng


def make(nodes, inputs, outputs, inits=(), value_info=(), elem=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "trap", inputs, outputs, list(inits),
                              value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tensor(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def bn_params(prefix, c, seed, dtype=np.float32):
    r = RNG(seed)
    return [tensor(f"{prefix}.s", r.uniform(0.5, 1.5, c), dtype),
            tensor(f"{prefix}.b", 0.2 * r.standard_normal(c), dtype),
            tensor(f"{prefix}.m", 0.5 * r.standard_normal(c), dtype),
            tensor(f"{prefix}.v", r.uniform(0.3, 2.0, c), dtype)]


def bn(prefix, x, y):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in "sbmv"], [y],
                            name=prefix)


def conv_w(name, o, i, k, seed, dtype=np.float32):
    return tensor(name, 0.3 * RNG(seed).standard_normal((o, i, k, k)), dtype)


def evaluate(model, feed):
    """Outputs of ``model``: onnxruntime, or the reference evaluator where it has no kernel."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        s = ort.InferenceSession(model.SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"])
    except Exception as e:
        if "NOT_IMPLEMENTED" not in str(e) and type(e).__name__ != "NotImplemented":
            raise
        from onnx.reference import ReferenceEvaluator
        return ReferenceEvaluator(model).run(None, feed)
    return s.run(None, feed)


def assert_same(original, fused, feeds, rtol=1e-5):
    for feed in feeds:
        for r, g in zip(evaluate(original, feed), evaluate(fused, feed)):
            assert r.shape == g.shape and r.dtype == g.dtype
            scale = float(np.abs(r).max())
            assert float(np.abs(g.astype(np.float64) - r).max()) <= rtol * scale, feed.keys()


def call(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def every_path(capsys, tmp_path, model, feeds, cli_args=(), rtol=1e-5):
    """The three results of ``model`` (CLI checked, CLI unchecked, ``reparam.fuse``), each
    valid and computing the original's outputs on ``feeds``."""
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    results = []
    for flags in ((), ("--no-check",)):
        out = tmp_path / f"out{len(results)}.onnx"
        code, _, err = call(capsys, src, out, *flags, *cli_args)
        assert code == 0, err
        assert "Warning" not in err
        results.append(onnx.load(out))
    results.append(reparam.fuse(model))
    for fused in results:
        onnx.checker.check_model(fused, full_check=True)
        assert_same(model, fused, feeds, rtol)
    return results


def ops(model):
    return Counter(n.op_type for n in model.graph.node)


# --- the cases -----------------------------------------------------------------------------

def test_initializer_that_is_a_graph_input_is_not_folded_as_a_constant(capsys, tmp_path):
    """``s`` of the first BatchNorm is an overridable default: feeding another value must
    change the fused model's output as it changes the original's; the second conv+BN,
    all constants, still folds."""
    c = 4
    inits = [conv_w("w1", c, 3, 3, 1), conv_w("w2", c, 3, 3, 2)] + bn_params("bn1", c, 3) \
        + bn_params("bn2", c, 4)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4), bn("bn1", "c1", "y1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], pads=[1] * 4), bn("bn2", "c2", "y2")]
    model = make(nodes, [vi("x", [1, 3, 8, 8]), vi("bn1.s", [c])],
                 [vi("y1", [1, c, 8, 8]), vi("y2", [1, c, 8, 8])], inits)
    x = RNG(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    feeds = [{"x": x}, {"x": x, "bn1.s": np.array([3.0, -1.0, 0.25, 7.0], np.float32)}]
    for fused in every_path(capsys, tmp_path, model, feeds):
        assert ops(fused)["BatchNormalization"] == 1 and ops(fused)["Conv"] == 2
        assert "bn1.s" in {i.name for i in fused.graph.input}


def test_folded_output_read_inside_a_subgraph_is_defined_once(capsys, tmp_path):
    """``y`` (conv+BN, folded) is a graph output and is read inside both branches of an If."""
    c = 4
    then = helper.make_graph([helper.make_node("Identity", ["y"], ["t"])], "then", [],
                             [vi("t", [1, c, 6, 6])])
    other = helper.make_graph([helper.make_node("Neg", ["y"], ["e"])], "else", [],
                              [vi("e", [1, c, 6, 6])])
    nodes = [helper.make_node("Conv", ["x", "w"], ["cv"]), bn("bn", "cv", "y"),
             helper.make_node("If", ["flag"], ["z"], then_branch=then, else_branch=other)]
    model = make(nodes, [vi("x", [1, 3, 8, 8]), vi("flag", [], TensorProto.BOOL)],
                 [vi("y", [1, c, 6, 6]), vi("z", [1, c, 6, 6])],
                 [conv_w("w", c, 3, 3, 1)] + bn_params("bn", c, 2))
    x = RNG(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    feeds = [{"x": x, "flag": np.array(f)} for f in (True, False)]
    for fused in every_path(capsys, tmp_path, model, feeds):
        defined = [o for n in fused.graph.node for o in n.output]
        assert len(defined) == len(set(defined))
        assert ops(fused)["BatchNormalization"] == 0


def repvgg_nodes(x, y, c, prefix="b"):
    """ReLU(BN(conv3x3 x) + BN(conv1x1 x) + BN(x)) and its initializers."""
    nodes = [helper.make_node("Conv", [x, f"{prefix}.w3"], [f"{prefix}.c3"], pads=[1] * 4),
             bn(f"{prefix}.bn3", f"{prefix}.c3", f"{prefix}.y3"),
             helper.make_node("Conv", [x, f"{prefix}.w1"], [f"{prefix}.c1"]),
             bn(f"{prefix}.bn1", f"{prefix}.c1", f"{prefix}.y1"),
             bn(f"{prefix}.bnid", x, f"{prefix}.yid"),
             helper.make_node("Add", [f"{prefix}.y3", f"{prefix}.y1"], [f"{prefix}.s1"]),
             helper.make_node("Add", [f"{prefix}.s1", f"{prefix}.yid"], [f"{prefix}.s2"]),
             helper.make_node("Relu", [f"{prefix}.s2"], [y])]
    return nodes


def repvgg_inits(c, seed, prefix="b", dtype=np.float32):
    return ([conv_w(f"{prefix}.w3", c, c, 3, seed, dtype), conv_w(f"{prefix}.w1", c, c, 1, seed + 1, dtype)]
            + bn_params(f"{prefix}.bn3", c, seed + 2, dtype) + bn_params(f"{prefix}.bn1", c, seed + 3, dtype)
            + bn_params(f"{prefix}.bnid", c, seed + 4, dtype))


def test_nodes_out_of_topological_order_are_sorted(capsys, tmp_path):
    c = 4
    nodes = repvgg_nodes("x", "h", c, "a") + repvgg_nodes("h", "y", c, "b")
    model = make(nodes[::-1], [vi("x", [1, c, 8, 8])], [vi("y", [1, c, 8, 8])],
                 repvgg_inits(c, 1, "a") + repvgg_inits(c, 10, "b"))
    feeds = [{"x": RNG(2).standard_normal((1, c, 8, 8)).astype(np.float32)}]
    for fused in every_path(capsys, tmp_path, model, feeds):
        assert ops(fused) == Counter({"Conv": 2, "Relu": 2})


def test_stale_value_info_does_not_freeze_a_size(capsys, tmp_path):
    """The file says ``r`` is 16x16, but the graph takes any size: a SAME_UPPER conv of
    stride 2 pads by an amount that depends on it, so it is not folded into fixed pads;
    the stride-1 SAME conv beside it (pads fixed whatever the size) is."""
    c = 4
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["cv"], auto_pad="SAME_UPPER", strides=[2, 2]),
             bn("bn", "cv", "y"),
             helper.make_node("Conv", ["r", "w1"], ["cv1"], auto_pad="SAME_UPPER"),
             bn("bn1", "cv1", "y1")]
    model = make(nodes, [vi("x", [1, c, "H", "W"])],
                 [vi("y", [1, c, None, None]), vi("y1", [1, c, None, None])],
                 [conv_w("w", c, c, 3, 1), conv_w("w1", c, c, 3, 2)] + bn_params("bn", c, 3)
                 + bn_params("bn1", c, 4), value_info=[vi("r", [1, c, 16, 16])])
    feeds = [{"x": RNG(s).standard_normal((1, c, s, s)).astype(np.float32)} for s in (16, 17)]
    for fused in every_path(capsys, tmp_path, model, feeds, ("--input-shape", "x:1,4,17,17")):
        assert ops(fused)["BatchNormalization"] == 1 and ops(fused)["Conv"] == 2


def test_float64_model_is_checked_not_refused(capsys, tmp_path):
    """onnxruntime has no float64 Conv: the default check runs the reference evaluator."""
    c = 3
    model = make(repvgg_nodes("x", "y", c), [vi("x", [1, c, 6, 6], TensorProto.DOUBLE)],
                 [vi("y", [1, c, 6, 6], TensorProto.DOUBLE)], repvgg_inits(c, 1, dtype=np.float64))
    feeds = [{"x": RNG(2).standard_normal((1, c, 6, 6))}]
    for fused in every_path(capsys, tmp_path, model, feeds, rtol=1e-12):
        assert ops(fused) == Counter({"Conv": 1, "Relu": 1})


def test_onnxruntime_failure_on_the_fused_model_is_a_verification_failure(
        capsys, tmp_path, monkeypatch):
    """A fused model onnxruntime loads but cannot run (here: a Reshape to a size that does
    not fit, added on purpose) fails the check: exit 1, nothing written."""
    from reparam.frontends import onnx as fe

    real = fe.lower

    def broken(lifted, **kw):
        m = real(lifted, **kw)
        y = m.graph.output[0].name
        for n in m.graph.node:
            n.output[:] = [y + "_pre" if o == y else o for o in n.output]
        m.graph.initializer.append(tensor("bad_shape", [7, -1], np.int64))
        m.graph.node.append(helper.make_node("Reshape", [y + "_pre", "bad_shape"], [y]))
        m.graph.value_info.clear()
        return m

    monkeypatch.setattr(fe, "lower", broken)
    c = 3
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(make(repvgg_nodes("x", "y", c), [vi("x", ["N", c, 6, 6])],
                   [vi("y", ["N", c, 6, 6])], repvgg_inits(c, 1)), src)  # (a dynamic size: the
    code, _, err = call(capsys, src, out)                   # Reshape fails when it runs)
    assert code == 1 and not out.exists()
    assert "verification failed" in err and "onnxruntime cannot run the fused model" in err


def test_a_corrupted_fold_is_refused_and_named(capsys, tmp_path, monkeypatch):
    """Folded biases moved by 1e-5 of the output's size (below the 1e-4 output tolerance,
    far above float32 rounding) are caught where the rewrite happened."""
    from reparam.frontends import onnx_lower

    real = onnx_lower._add_initializer

    def shifted(graph, name, array, held):
        return real(graph, name, array + 3e-5 if name.endswith(".bias") else array, held)

    monkeypatch.setattr(onnx_lower, "_add_initializer", shifted)
    c = 4
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(make(repvgg_nodes("x", "y", c), [vi("x", [1, c, 8, 8])], [vi("y", [1, c, 8, 8])],
                   repvgg_inits(c, 1)), src)
    code, _, err = call(capsys, src, out)
    assert code == 1 and not out.exists(), err
    assert "folded block 'b.s2'" in err or "folded block 'b." in err
    assert "the original itself moves by" in err


def test_exact_fold_of_an_ill_conditioned_model_is_not_refused(capsys, tmp_path):
    """Outputs that are small remainders of large values (a BatchNorm whose shift cancels
    most of its output, then a Sub): float32 rounds the original itself by more than 1e-4
    of its outputs' size; the fold is exact and passes."""
    c = 4
    r = RNG(0)
    big = np.full(c, 2e4)
    inits = [conv_w("w", c, 3, 3, 1), tensor("bn.s", r.uniform(0.5, 1.5, c)),
             tensor("bn.b", big), tensor("bn.m", 0.1 * r.standard_normal(c)),
             tensor("bn.v", r.uniform(0.5, 2, c)), tensor("shift", (big - 0.5)[:, None, None])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["cv"], pads=[1] * 4), bn("bn", "cv", "t"),
             helper.make_node("Sub", ["t", "shift"], ["y"])]
    model = make(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, c, 8, 8])], inits)
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    code, stdout, err = call(capsys, src, out)
    assert code == 0, err
    fused = onnx.load(out)
    assert ops(fused) == Counter({"Conv": 1})
    # the original's own float32 error really is above 1e-4 of its outputs
    from onnx.reference import ReferenceEvaluator
    m64 = onnx.ModelProto()
    m64.CopyFrom(model)
    for t in m64.graph.initializer:
        t.CopyFrom(tensor(t.name, numpy_helper.to_array(t), np.float64))
    for v in list(m64.graph.input) + list(m64.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    x = RNG(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    exact = ReferenceEvaluator(m64).run(None, {"x": x.astype(np.float64)})[0]
    own = np.abs(evaluate(model, {"x": x})[0] - exact).max() / np.abs(exact).max()
    assert own > 1e-4


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_perturb_moves_every_float_weight_by_one_relative_eps(dtype):
    """The check's noise model: each float initializer (and Constant) element is multiplied
    by ``1 - eps`` or ``1 + eps`` in its own dtype, both directions about equally often;
    integer tensors stay as they are."""
    from reparam.check_run import perturb

    w = RNG(0).standard_normal((64, 3, 3, 3)).astype(dtype)
    w[0] = 0
    ints = np.arange(4, dtype=np.int64)
    model = make([helper.make_node("Conv", ["x", "w"], ["y"]),
                  helper.make_node("Constant", [], ["c"], value=tensor("c", w[1:2], dtype))],
                 [vi("x", [1, 3, 8, 8])], [vi("y", [1, 64, 6, 6])],
                 [tensor("w", w, dtype), tensor("i", ints, np.int64)])
    perturb(model, seed=3)
    got = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    eps = np.finfo(dtype).eps
    assert got["w"].dtype == dtype and np.array_equal(got["i"], ints)
    assert not got["w"][0].any()  # zero stays zero
    # x * (1 +- eps) rounds to x moved by one or two units in the last place: a relative
    # change between eps / 2 and 2 eps, never zero
    change = got["w"][1:].astype(np.float64) / w[1:].astype(np.float64) - 1
    assert (np.abs(change) >= eps / 2).all() and (np.abs(change) <= 2 * eps).all()
    up = change > 0
    assert 0.4 < up.mean() < 0.6
    assert np.array_equal(got["w"][1:], w[1:] * np.where(up, dtype(1 + eps), dtype(1 - eps)))
    constant = numpy_helper.to_array(model.graph.node[1].attribute[0].t)
    assert not np.array_equal(constant, w[1:2])


def test_topk_after_a_fold_may_reorder_ties(capsys, tmp_path):
    """Two channels equal but for rounding (a 3x3 plus a 1x1 conv; the second channel's 1x1
    already added into its 3x3), then TopK over them: the original's float32 rounding picks
    either channel, the fused model (both merged into the same weights) always the first.
    The integer output follows rounding, so the folded blocks before it decide."""
    r = RNG(0)
    w3 = (0.3 * r.standard_normal((1, 3, 3, 3))).astype(np.float32)
    w1 = (0.3 * r.standard_normal((1, 3, 1, 1))).astype(np.float32)
    merged = w3.copy()
    merged[:, :, 1, 1] += w1[:, :, 0, 0]
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], pads=[1] * 4),
             helper.make_node("Conv", ["x", "w1"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["t"]),
             helper.make_node("TopK", ["t", "k"], ["values", "indices"], axis=1)]
    model = make(nodes, [vi("x", [1, 3, 16, 16])],
                 [vi("values", [1, 1, 16, 16]), vi("indices", [1, 1, 16, 16], TensorProto.INT64)],
                 [tensor("w3", np.concatenate([w3, merged])),
                  tensor("w1", np.concatenate([w1, np.zeros_like(w1)])), tensor("k", [1], np.int64)])
    x = r.standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert 0 < evaluate(model, {"x": x})[1].mean() < 1  # the original does pick both
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    code, _, err = call(capsys, src, out)
    assert code == 0, err
    assert ops(onnx.load(out)) == Counter({"Conv": 1, "TopK": 1})


def test_external_data_beside_an_output_named_in_the_current_directory(
        capsys, tmp_path, monkeypatch):
    """A data file named like OUT's (``out.onnx.data``) in the current directory, from an
    earlier run elsewhere, does not stop the CLI from writing OUT with external data."""
    c = 64
    model = make(repvgg_nodes("x", "y", c), [vi("x", [1, c, 8, 8])], [vi("y", [1, c, 8, 8])],
                 repvgg_inits(c, 1))
    src = tmp_path / "in.onnx"
    onnx.save(model, src, save_as_external_data=True, location="in.onnx.data")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "out.onnx.data").write_bytes(b"unrelated")
    (tmp_path / "o").mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = call(capsys, src, tmp_path / "o" / "out.onnx")
    assert code == 0, err
    assert (elsewhere / "out.onnx.data").read_bytes() == b"unrelated"
    fused = onnx.load(tmp_path / "o" / "out.onnx")
    assert ops(fused) == Counter({"Conv": 1, "Relu": 1})


def test_per_channel_constants_with_zeros_fold_without_a_warning(capsys, tmp_path):
    """``conv(x) * c`` with ``c`` zero on some channels (as in MobileOne and FastViT exports)
    folds, and no numpy warning is raised (a reciprocal was computed for every per-channel
    constant, a Mul's too: 'divide by zero'); ``conv(x) / d`` with a zero in ``d`` is kept,
    and the check compares its infinities as equal (was 'invalid value in subtract')."""
    import warnings

    c = 4
    zeros = np.array([0.0, 1.5, 0.0, -2.0]).reshape(1, c, 1, 1)

    def model(op):
        nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
                 helper.make_node(op, ["h", "s"], ["y"])]
        return make(nodes, [vi("x", [1, c, 6, 6])], [vi("y", [1, c, 6, 6])],
                    [conv_w("w", c, c, 3, 1), tensor("s", zeros)])

    feeds = [{"x": RNG(k).standard_normal((1, c, 6, 6)).astype(np.float32)} for k in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fused in every_path(capsys, tmp_path, model("Mul"), feeds):
            assert ops(fused) == Counter({"Conv": 1})
        onnx.save(model("Div"), tmp_path / "div.onnx")
        code, _, err = call(capsys, tmp_path / "div.onnx", tmp_path / "div-out.onnx")
        assert code == 0 and "Warning" not in err, err
        assert ops(onnx.load(tmp_path / "div-out.onnx")) == Counter({"Conv": 1, "Div": 1})
