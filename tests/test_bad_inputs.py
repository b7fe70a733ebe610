"""Bad input gets a clear error and nothing is lost.

Every file of the corpus goes through the command line (``reparam IN OUT``, with
its default onnxruntime check) and must give exit code 2, exactly one line on
stderr naming the problem, no OUT (nor a temporary file beside it), and an input
file that is byte for byte what it was. The same files through the Python API
raise :class:`reparam.errors.BadInputError` with the same message.

From Python, a non-module argument and a model none of whose parts trace are
covered by test_fuse_api.py (``test_non_module_is_rejected``,
``test_nothing_traceable_is_a_clear_error``).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reparam
from reparam import cli
from reparam.errors import BadInputError

C = 4


def vinfo(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def make(nodes, inits, inputs=None, opset=17):
    graph = helper.make_graph(nodes, "g", inputs or [vinfo("x", [1, C, 6, 6])], [vinfo("y", [None] * 4)],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_bn(weight_shape=(C, C, 3, 3), group=1, **stats):
    """Conv -> BatchNormalization, a valid model unless told otherwise."""
    rng = np.random.default_rng(0)
    values = {"s": rng.uniform(0.5, 1.5, C), "b": rng.standard_normal(C), "m": rng.standard_normal(C),
              "v": rng.uniform(0.5, 2, C)}
    values.update(stats)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")]
    return make(nodes, [init("w", rng.standard_normal(weight_shape))] + [init(k, v) for k, v in values.items()])


def external_missing(folder):
    """A model of 2.3 GB whose weights are in external files that are not there."""
    model = conv_bn()
    big = onnx.TensorProto()
    big.name, big.data_type = "big", TensorProto.FLOAT
    big.dims.extend([1024, 1024, 32, 17])  # 2.28 GB of float32
    model.graph.initializer.append(big)
    for t in model.graph.initializer:
        if t.name in ("w", "big"):
            n = int(np.prod(t.dims)) * 4
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(n))):
                e = t.external_data.add()
                e.key, e.value = k, v
    model.graph.node.append(helper.make_node("Add", ["y", "big"], ["z"], name="uses_big"))
    return model


def _write(folder, name, data):
    path = folder / name
    if isinstance(data, onnx.ModelProto):
        onnx.save(data, path)  # no checker: these models are meant to be wrong
    else:
        path.write_bytes(data)
    return path


def _cycle():
    nodes = [helper.make_node("Add", ["x", "r"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Identity", ["r"], ["y"], name="out")]
    return make(nodes, [])


def _undefined():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "bias_that_is_not_there"], ["y"], name="add")]
    return make(nodes, [init("w", np.ones((C, C, 1, 1)))])


def _opset(version):
    model = conv_bn()
    model.opset_import[0].version = version
    return model


def _zero_input_channels():
    return make([helper.make_node("Relu", ["x"], ["y"], name="relu")], [], inputs=[vinfo("x", [1, 0, 6, 6])])


def _zero_output_channels():
    return make([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [init("w", np.zeros((0, C, 1, 1)))])


def _zero_bn():
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")]
    return make(nodes, [init(k, np.zeros(0)) for k in "sbmv"])


def _nan(at):
    v = np.ones(C)
    v[1] = np.nan if at == "m" else np.inf
    return conv_bn(**{at: v})


_GOOD = conv_bn().SerializeToString()

#: (file name, contents or a function of the folder, what the error line must say)
CORPUS = [
    ("empty.onnx", b"", "empty file"),
    ("random.onnx", np.random.default_rng(1).bytes(4096), "not an ONNX model"),
    ("truncated.onnx", _GOOD[: len(_GOOD) * 2 // 3], "not an ONNX model"),
    ("opset30.onnx", _opset(30), "unsupported opset 30"),
    ("opset1.onnx", _opset(1), "unsupported opset 1"),
    ("cycle.onnx", _cycle(), "the graph has a cycle: add -> relu -> add"),
    ("undefined.onnx", _undefined(), "reads 'bias_that_is_not_there', which no node, graph input or initializer defines"),
    ("groups.onnx", conv_bn(group=2), "with group=2 reads 8 input channels, but its input has 4"),
    ("nan_mean.onnx", _nan("m"), "'bn': mean is nan at channel 1"),
    ("inf_var.onnx", _nan("v"), "'bn': variance is inf at channel 1"),
    ("negative_var.onnx", conv_bn(v=np.array([1.0, 1.0, -0.5, 1.0])), "'bn': negative variance -0.5 at channel 2"),
    ("zero_in.onnx", _zero_input_channels(), "input 'x' has a zero-size dimension"),
    ("zero_out.onnx", _zero_output_channels(), "'conv': weight of shape (0, 4, 1, 1) has a zero-size dimension"),
    ("zero_bn.onnx", _zero_bn(), "zero-size"),
    ("huge_external.onnx", external_missing, "external data file 'weights.bin' of initializer 'w' is missing"),
]


def _corpus_file(tmp_path, name, data):
    return _write(tmp_path, name, data(tmp_path) if callable(data) else data)


@pytest.mark.parametrize("name,data,needle", CORPUS, ids=[c[0] for c in CORPUS])
def test_cli_bad_input(capfd, tmp_path, name, data, needle):
    src = _corpus_file(tmp_path, name, data)
    before = src.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    out = tmp_path / "out.onnx"
    code = cli.main([str(src), str(out)])
    stdout, err = capfd.readouterr()  # file-descriptor level: onnxruntime's own log lines count too
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("reparam: error: ") and needle in err, err
    assert stdout == ""
    assert not out.exists() and sorted(os.listdir(tmp_path)) == listing  # no output, no temporaries
    assert src.read_bytes() == before


@pytest.mark.parametrize("name,data,needle", CORPUS, ids=[c[0] for c in CORPUS])
def test_api_bad_input(tmp_path, name, data, needle):
    src = _corpus_file(tmp_path, name, data)
    before = src.read_bytes()
    with pytest.raises(BadInputError) as info:
        reparam.fuse(src)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert src.read_bytes() == before
    if isinstance(data, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(data)
        with pytest.raises(BadInputError, match="."):  # the same model as a proto
            reparam.fuse(proto)
        assert proto == data


def test_bad_input_from_a_subprocess(tmp_path):
    """The exit code and the one line seen by a shell."""
    src = _write(tmp_path, "cycle.onnx", _cycle())
    r = subprocess.run([sys.executable, "-m", "reparam", str(src), str(tmp_path / "out.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"reparam: error: {src}: the graph has a cycle: add -> relu -> add"]
    assert sorted(os.listdir(tmp_path)) == ["cycle.onnx"]


def test_the_valid_model_of_the_corpus_fuses(capfd, tmp_path):
    """The corpus' models are wrong only where they are meant to be."""
    src = _write(tmp_path, "good.onnx", conv_bn())
    assert cli.main([str(src), str(tmp_path / "out.onnx"), "-q"]) == 0
    assert capfd.readouterr() == ("", "")
    assert [n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node] == ["Conv"]
