"""What the ONNX frontend folds beyond conv+BN and Add trees, and what the output no longer
carries (issue 14): a Neg branch, an inference Dropout between Conv and BatchNorm, a
one-input Sum, ConvTranspose -> BatchNormalization, BatchNorm + Gemm heads, no-op nodes,
equal new tensors. Each model goes through the CLI (checked and not) and ``reparam.fuse``
(see ``every_path``), with random BatchNorm statistics.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper

from test_onnx_traps import (RNG, bn, bn_params, conv_w, every_path, make, ops, repvgg_inits,
                             repvgg_nodes, tensor, vi)


def feeds(shape, n=2):
    return [{"x": RNG(s).standard_normal(shape).astype(np.float32)} for s in range(n)]


def weights(model):
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def test_neg_branch_folds(capsys, tmp_path):
    """``conv3x3(x) - ...`` written as ``Add(BN(conv(x)), Neg(BN(conv1x1(x))))`` plus ``Neg(x)``."""
    c = 4
    nodes = [helper.make_node("Conv", ["x", "w3"], ["c3"], pads=[1] * 4), bn("bn3", "c3", "y3"),
             helper.make_node("Conv", ["x", "w1"], ["c1"]), bn("bn1", "c1", "y1"),
             helper.make_node("Neg", ["y1"], ["n1"]), helper.make_node("Neg", ["x"], ["nx"]),
             helper.make_node("Add", ["y3", "n1"], ["s"]), helper.make_node("Add", ["s", "nx"], ["y"])]
    model = make(nodes, [vi("x", [1, c, 8, 8])], [vi("y", [1, c, 8, 8])],
                 [conv_w("w3", c, c, 3, 1), conv_w("w1", c, c, 1, 2)] + bn_params("bn3", c, 3)
                 + bn_params("bn1", c, 4))
    for fused in every_path(capsys, tmp_path, model, feeds((1, c, 8, 8))):
        assert ops(fused) == Counter({"Conv": 1})


def test_inference_dropout_between_conv_and_bn_and_one_input_sum_fold(capsys, tmp_path):
    c = 4
    nodes = [helper.make_node("Conv", ["x", "w"], ["cv"], pads=[1] * 4),
             helper.make_node("Dropout", ["cv", "ratio"], ["d"]), bn("bn", "d", "t"),
             helper.make_node("Sum", ["t"], ["y"])]
    model = make(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, c, 8, 8])],
                 [conv_w("w", c, 3, 3, 1), tensor("ratio", np.array(0.3))] + bn_params("bn", c, 2))
    for fused in every_path(capsys, tmp_path, model, feeds((1, 3, 8, 8))):
        assert ops(fused) == Counter({"Conv": 1})


def test_conv_transpose_then_batchnorm_folds(capsys, tmp_path):
    c_in, c_out = 4, 6
    w = (0.3 * RNG(1).standard_normal((c_in, c_out // 2, 3, 3))).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["ct"], strides=[2, 2],
                              pads=[1, 1, 0, 0], output_padding=[1, 1], group=2),
             bn("bn", "ct", "y")]
    model = make(nodes, [vi("x", [1, c_in, 5, 5])], [vi("y", [1, c_out, 11, 11])],
                 [tensor("w", w), tensor("b", RNG(2).standard_normal(c_out))]
                 + bn_params("bn", c_out, 3))
    for fused in every_path(capsys, tmp_path, model, feeds((1, c_in, 5, 5))):
        assert ops(fused) == Counter({"ConvTranspose": 1})


def test_batchnorm_and_linear_heads_fold_into_one_gemm(capsys, tmp_path):
    """RepViT's classifier: ``(Gemm(BN(x)) + Gemm(BN'(x))) / 2`` on ``(N, C)``; also a
    MatMul + Add and a layer scale read by a Gemm."""
    c, k = 8, 5
    r = RNG(0)
    nodes = [helper.make_node("ReduceMean", ["x"], ["p"], axes=[2, 3], keepdims=0),
             bn("bn1", "p", "q1"), helper.make_node("Gemm", ["q1", "w1", "b1"], ["g1"], transB=1),
             bn("bn2", "p", "q2"), helper.make_node("Gemm", ["q2", "w2", "b2"], ["g2"], alpha=0.5,
                                                    beta=2.0),
             helper.make_node("Add", ["g1", "g2"], ["s"]),
             helper.make_node("Div", ["s", "two"], ["y"])]
    model = make(nodes, [vi("x", ["N", c, 4, 4])], [vi("y", ["N", k])],
                 [tensor("w1", r.standard_normal((k, c))), tensor("b1", r.standard_normal(k)),
                  tensor("w2", r.standard_normal((c, k))), tensor("b2", r.standard_normal((1, k))),
                  tensor("two", np.array(2.0))] + bn_params("bn1", c, 1) + bn_params("bn2", c, 2))
    for fused in every_path(capsys, tmp_path, model, feeds((3, c, 4, 4))):
        assert ops(fused) == Counter({"ReduceMean": 1, "Gemm": 1})
        assert weights(fused) == k * c + k


def test_no_op_nodes_go_unless_an_output_name_needs_them(capsys, tmp_path):
    """Identity of a weight (as the TorchScript exporter writes shared ones), Identity and
    inference Dropout between opaque ops go; an Identity that makes a graph output stays."""
    c = 4
    nodes = [helper.make_node("Identity", ["w"], ["w_id"]),
             helper.make_node("Conv", ["x", "w_id"], ["cv"], pads=[1] * 4),
             helper.make_node("Relu", ["cv"], ["r"]), helper.make_node("Identity", ["r"], ["i"]),
             helper.make_node("Dropout", ["i"], ["d"]), helper.make_node("Sigmoid", ["d"], ["s"]),
             helper.make_node("Identity", ["s"], ["y"])]
    model = make(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, c, 8, 8])], [conv_w("w", c, 3, 3, 1)])
    for fused in every_path(capsys, tmp_path, model, feeds((1, 3, 8, 8))):
        assert ops(fused) == Counter({"Conv": 1, "Relu": 1, "Sigmoid": 1, "Identity": 1})


def test_equal_new_tensors_are_written_once_and_weights_never_grow(capsys, tmp_path):
    """Two RepVGG blocks with equal parameters fold to equal kernels: one tensor each."""
    c = 8
    inits = repvgg_inits(c, 1, "a")
    twin = [onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), "b" + t.name[1:])
            for t in inits]
    model = make(repvgg_nodes("x", "h1", c, "a") + repvgg_nodes("x", "h2", c, "b")
                 + [helper.make_node("Add", ["h1", "h2"], ["y"])],
                 [vi("x", [1, c, 8, 8])], [vi("y", [1, c, 8, 8])], inits + twin)
    for fused in every_path(capsys, tmp_path, model, feeds((1, c, 8, 8))):
        assert ops(fused)["Conv"] == 2
        assert len(fused.graph.initializer) == 2  # one weight and one bias, read twice
        assert weights(fused) == c * c * 9 + c <= weights(model)


def test_float16_conv_transpose_type_is_kept(capsys, tmp_path):
    c = 4
    w = (0.3 * RNG(1).standard_normal((c, c, 2, 2))).astype(np.float16)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["ct"], strides=[2, 2]),
             bn("bn", "ct", "y")]
    model = make(nodes, [vi("x", [1, c, 4, 4], TensorProto.FLOAT16)],
                 [vi("y", [1, c, 8, 8], TensorProto.FLOAT16)],
                 [tensor("w", w, np.float16)] + bn_params("bn", c, 3, np.float16))
    x = [{"x": RNG(0).standard_normal((1, c, 4, 4)).astype(np.float16)}]
    for fused in every_path(capsys, tmp_path, model, x, rtol=1e-2):
        assert ops(fused) == Counter({"ConvTranspose": 1})
        assert {t.data_type for t in fused.graph.initializer} == {TensorProto.FLOAT16}


def test_a_weight_other_nodes_read_is_not_copied_by_a_fold(capsys, tmp_path):
    """``w`` is read by two convs (through Identity nodes, as the TorchScript exporter shares
    it); folding the BatchNorm after one of them would write a second copy while ``w``
    stays for the other: refused for cost, and the output has no more weights than the
    input. A conv whose weight nobody else reads still folds."""
    c = 8
    nodes = [helper.make_node("Identity", ["w"], ["wa"]), helper.make_node("Identity", ["w"], ["wb"]),
             helper.make_node("Conv", ["x", "wa"], ["ca"], pads=[1] * 4), bn("bna", "ca", "ya"),
             helper.make_node("Conv", ["x", "wb"], ["cb"], pads=[1] * 4),
             helper.make_node("Conv", ["x", "w2"], ["c2"], pads=[1] * 4), bn("bn2", "c2", "y2")]
    model = make(nodes, [vi("x", [1, c, 8, 8])],
                 [vi("ya", [1, c, 8, 8]), vi("cb", [1, c, 8, 8]), vi("y2", [1, c, 8, 8])],
                 [conv_w("w", c, c, 3, 1), conv_w("w2", c, c, 3, 2)] + bn_params("bna", c, 3)
                 + bn_params("bn2", c, 4))
    for fused in every_path(capsys, tmp_path, model, feeds((1, c, 8, 8))):
        assert ops(fused) == Counter({"Conv": 3, "BatchNormalization": 1})
        assert weights(fused) <= weights(model)
    _, rep = __import__("reparam").fuse(model, report=True)
    assert [r.kind for r in rep.refused if r.rule == "fold_conv_bn"] == ["cost"]


def test_heads_sharing_one_zero_bias_still_fold(capsys, tmp_path):
    """The TorchScript exporter writes equal initializers once: RepViT's two classifier
    heads read one all-zero bias. The weights are not shared, so the folds go ahead and the
    bias goes with its last reader."""
    c, k = 8, 5
    r = RNG(1)
    nodes = [helper.make_node("ReduceMean", ["x"], ["p"], axes=[2, 3], keepdims=0),
             bn("bn1", "p", "q1"), helper.make_node("Gemm", ["q1", "w1", "zero"], ["g1"], transB=1),
             bn("bn2", "p", "q2"), helper.make_node("Gemm", ["q2", "w2", "zero"], ["g2"], transB=1),
             helper.make_node("Add", ["g1", "g2"], ["y"])]
    model = make(nodes, [vi("x", ["N", c, 4, 4])], [vi("y", ["N", k])],
                 [tensor("w1", r.standard_normal((k, c))), tensor("w2", r.standard_normal((k, c))),
                  tensor("zero", np.zeros(k))] + bn_params("bn1", c, 1) + bn_params("bn2", c, 2))
    for fused in every_path(capsys, tmp_path, model, feeds((2, c, 4, 4))):
        assert ops(fused) == Counter({"ReduceMean": 1, "Gemm": 1})
        assert weights(fused) == k * c + k < weights(model)
