"""Messages a new user meets say what is wrong and what to do (issue 11).

A PyTorch checkpoint given where an ONNX file is expected, ``example_inputs`` of
the wrong kind for a torch or an ONNX model, ``--input-shape`` for an input the
model does not have, the tolerance the CLI's check used, and the permission bits
of what the CLI writes.
"""
from __future__ import annotations

import json
import os
import stat
import warnings
import zipfile

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import reparam
from reparam import cli
from reparam.errors import BadInputError

torch.set_num_threads(1)
C = 4


def call(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def conv_bn_model(inputs=None, extra_outputs=(), second_input=False, c=C):
    """x -> Conv -> BatchNormalization -> y (plus what the arguments add): a model that folds."""
    rng = np.random.default_rng(0)
    elem = TensorProto.FLOAT

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)

    inits = [init("w", rng.standard_normal((c, c, 3, 3))), init("s", rng.uniform(0.5, 1.5, c)),
             init("b", rng.standard_normal(c)), init("m", rng.standard_normal(c)),
             init("v", rng.uniform(0.5, 2, c))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")]
    ins = [helper.make_tensor_value_info("x", elem, inputs or [1, c, 6, 6])]
    outs = [helper.make_tensor_value_info("y", elem, [None] * 4)]
    if second_input:
        ins.append(helper.make_tensor_value_info("bias", elem, [1, C, 1, 1]))
        nodes.append(helper.make_node("Add", ["y", "bias"], ["z"], name="add"))
        outs = [helper.make_tensor_value_info("z", elem, [None] * 4)]
    for node, out in extra_outputs:
        nodes.append(node)
        outs.append(out)
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.bn = nn.BatchNorm2d(C)

    def forward(self, x):
        return self.bn(self.conv(x))


class Scaled(Block):
    def forward(self, x, scale):
        return self.bn(self.conv(x)) * scale


# --- a PyTorch file where an ONNX file is expected ---------------------------------------------

TORCH_ADVICE = ("reparam reads ONNX files: in Python, load the weights into the nn.Module they "
                "belong to and call reparam.fuse(model), or export the model to ONNX first with "
                "torch.onnx.export(model, (x,), 'model.onnx')")


def _torch_files(folder):
    block = Block().eval()
    torch.save(block.state_dict(), folder / "ckpt.pth")
    torch.save(block.state_dict(), folder / "legacy.pth", _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit says it is deprecated
        torch.jit.save(torch.jit.script(nn.Sequential(block.conv, block.bn)), folder / "scripted.pt")
    return {
        "ckpt.pth": "looks like a PyTorch checkpoint (a zip archive written by torch.save), "
                    f"not an ONNX model; {TORCH_ADVICE}",
        "legacy.pth": "looks like a PyTorch checkpoint or another Python pickle (pickle protocol 2, "
                      f"as written by torch.save), not an ONNX model; {TORCH_ADVICE}",
        "scripted.pt": "looks like a TorchScript archive (written by torch.jit.save), not an ONNX "
                       f"model; {TORCH_ADVICE}",
    }


def test_torch_checkpoint_given_to_the_cli_says_what_to_do(capsys, tmp_path):
    for name, message in _torch_files(tmp_path).items():
        assert (tmp_path / name).read_bytes()[:4] in (b"PK\x03\x04", b"\x80\x02\x8a\x0a")
        code, out, err = call(capsys, tmp_path / name, tmp_path / "out.onnx")
        assert code == 2 and out == ""
        assert err == f"reparam: error: {tmp_path / name}: {message}\n"
        assert "Wire format" not in err and not (tmp_path / "out.onnx").exists()


def test_torch_checkpoint_given_to_fuse_says_what_to_do(tmp_path):
    for name, message in _torch_files(tmp_path).items():
        with pytest.raises(BadInputError) as info:
            reparam.fuse(str(tmp_path / name))
        assert str(info.value) == f"{tmp_path / name}: {message}"
    with pytest.raises(BadInputError, match="looks like a PyTorch checkpoint"):
        reparam.fuse(tmp_path / "ckpt.pth")  # a pathlib.Path as well


def test_other_files_are_not_onnx_models(capsys, tmp_path):
    with zipfile.ZipFile(tmp_path / "arrays.npz", "w") as z:
        z.writestr("a.npy", b"\x93NUMPY")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    (tmp_path / "notes.onnx").write_text("definitely not onnx\n")
    (tmp_path / "pickle.onnx").write_bytes(b"\x80\x04\x95" + bytes(40))
    expected = {
        "arrays.npz": "is a zip archive, not an ONNX model (an ONNX file is a single protobuf "
                      "message, as written by torch.onnx.export or onnx.save)",
        "w.safetensors": f"looks like a safetensors weights file, not an ONNX model; {TORCH_ADVICE}",
        "notes.onnx": "not an ONNX model (cannot parse",
        "pickle.onnx": "looks like a PyTorch checkpoint or another Python pickle (pickle protocol 4",
    }
    for name, message in expected.items():
        code, _, err = call(capsys, tmp_path / name, tmp_path / "out.onnx")
        assert code == 2 and err.startswith(f"reparam: error: {tmp_path / name}: {message}"), err
        assert err.count("\n") == 1
        with pytest.raises(BadInputError, match="not an ONNX model"):
            reparam.fuse(tmp_path / name)


def test_a_real_onnx_file_is_not_taken_for_something_else(tmp_path):
    onnx.save(conv_bn_model(), tmp_path / "m.onnx")
    assert [n.op_type for n in reparam.fuse(tmp_path / "m.onnx").graph.node] == ["Conv"]


# --- example_inputs of a torch model ------------------------------------------------------------

def test_torch_example_inputs_tensor_tuple_or_list():
    one, two = Block().eval(), Scaled().eval()
    x, scale = torch.randn(2, C, 6, 6), torch.tensor(0.5)
    for model, example in ((one, x), (one, (x,)), (one, [x]), (two, (x, scale)), (two, [x, scale])):
        fused = reparam.fuse(model, example_inputs=example)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        args = example if isinstance(example, (tuple, list)) else (example,)
        torch.testing.assert_close(fused(*args), model(*args), rtol=1e-5, atol=1e-6)


def test_torch_example_inputs_of_another_kind_say_what_is_accepted():
    model = Block().eval()
    x = torch.randn(1, C, 6, 6)
    accepted = ("example_inputs for a torch model: a tensor, or a tuple or list of the forward's "
                "positional arguments, e.g. x or (x, y); got ")
    with pytest.raises(TypeError) as info:
        reparam.fuse(model, example_inputs={"x": x})
    assert str(info.value) == accepted + "dict"
    with pytest.raises(TypeError) as info:
        reparam.fuse(model, example_inputs=x.numpy())
    assert str(info.value) == accepted + "numpy.ndarray (torch.from_numpy(a) makes it a tensor)"
    with pytest.raises(TypeError) as info:
        reparam.fuse(model, example_inputs=[x.numpy()])
    assert str(info.value) == ("example_inputs for a torch model: got a numpy.ndarray among the "
                               "arguments; pass tensors (torch.from_numpy(a) makes one)")


# --- example_inputs of an ONNX model ------------------------------------------------------------

def _conv_bn():
    return nn.Sequential(nn.Conv2d(3, C, 3), nn.BatchNorm2d(C)).eval()


@pytest.mark.parametrize("wrap, advice", [
    (torch.jit.script, "TorchScript module.*fuse the Python model, then script"),
    (torch.compile, r"OptimizedModule wraps the model to fuse: pass model\._orig_mod"),
    (nn.DataParallel, r"DataParallel wraps the model to fuse: pass model\.module"),
], ids=["jit.script", "torch.compile", "DataParallel"])
def test_wrapped_models_say_what_to_pass(wrap, advice):
    """A wrapper would be fused part by part, taking its model apart (nothing folded, no
    word why): fuse says which model to pass instead."""
    with pytest.raises(reparam.ReparamError, match=advice):
        reparam.fuse(wrap(_conv_bn()))


def test_model_on_the_meta_device_says_to_load_weights():
    with pytest.raises(reparam.ReparamError, match=r"meta device.*0\.weight.*load its weights"):
        reparam.fuse(_conv_bn().to("meta"))


def test_onnx_example_inputs_array_dict_or_list(tmp_path):
    model = conv_bn_model()
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((1, C, 6, 6)).astype(np.float32)
    for source in (model, tmp_path / "m.onnx"):
        for example in (x, {"x": x}, [{"x": x}, {"x": -x}], [x, 2 * x], ({"x": x},)):
            fused = reparam.fuse(source, example_inputs=example)
            assert [n.op_type for n in fused.graph.node] == ["Conv"]
    two = conv_bn_model(second_input=True)
    bias = np.ones((1, C, 1, 1), np.float32)
    reparam.fuse(two, example_inputs={"x": x, "bias": bias})
    reparam.fuse(two, example_inputs=[{"x": x, "bias": bias}, {"x": x, "bias": -bias}])


def test_onnx_example_inputs_mistakes_name_the_model_inputs():
    one, two = conv_bn_model(inputs=["N", C, 6, 6]), conv_bn_model(second_input=True)
    x = np.zeros((1, C, 6, 6), np.float32)
    accepted = ("a numpy array (for a model with one input), a dict of input name -> array, or "
                "a list of such (one check each)")
    cases = [
        (one, {"y": x}, ValueError,
         "example_inputs: 'y' is not an input of the model; its inputs: x float32 [N,4,6,6]"),
        (two, x, ValueError,
         "example_inputs: an array needs a model with one input, this one has 2 (x float32 "
         "[1,4,6,6], bias float32 [1,4,1,1]); pass a dict of input name -> array"),
        (two, {"x": x}, ValueError,
         "example_inputs: no value for input 'bias'; the model's inputs: x float32 [1,4,6,6], "
         "bias float32 [1,4,1,1]"),
        (one, x.astype(np.float64), TypeError,
         "example_inputs['x'] is float64, the model's input is float32: cast it with "
         ".astype(np.float32)"),
        (one, np.zeros((1, C, 7, 6), np.float32), ValueError,
         "example_inputs['x'] has shape [1,4,7,6]; the model declares x float32 [N,4,6,6]"),
        (one, 3, TypeError, f"example_inputs for an ONNX model: {accepted}; got int"),
        (one, [], ValueError, f"example_inputs is empty: pass {accepted}"),
        (one, {"x": "zeros"}, TypeError, "example_inputs['x']: expected a numpy array, got str"),
    ]
    for model, example, kind, message in cases:
        with pytest.raises(kind) as info:
            reparam.fuse(model, example_inputs=example)
        assert str(info.value) == message
    # a batch of another size fits a dynamic dimension
    reparam.fuse(one, example_inputs=np.zeros((3, C, 6, 6), np.float32))


# --- the command line ----------------------------------------------------------------------------

def test_input_shape_for_an_input_the_model_does_not_have(capsys, tmp_path):
    onnx.save(conv_bn_model(inputs=["N", C, "H", "W"]), tmp_path / "dyn.onnx")
    code, _, err = call(capsys, tmp_path / "dyn.onnx", tmp_path / "out.onnx", "--input-shape", "y:1,4,8,8")
    assert code == 2
    assert err == ("reparam: error: --input-shape y:1,4,8,8: 'y' is not an input of the model; "
                   "its inputs: x float32 [N,4,H,W]\n")
    code, _, err = call(capsys, tmp_path / "dyn.onnx", tmp_path / "out.onnx", "-q",
                        "--input-shape", "x:2,4,8,8")
    assert code == 0, err
    # with the right name, the dynamic dimensions are the input's own problem
    code, _, err = call(capsys, tmp_path / "dyn.onnx", tmp_path / "out.onnx")
    assert code == 2 and "input 'x' has dynamic shape [N,4,H,W]" in err


def _check_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith("check:"))


def test_cli_prints_the_tolerance_it_used(capsys, tmp_path):
    onnx.save(conv_bn_model(), tmp_path / "f32.onnx")
    code, out, err = call(capsys, tmp_path / "f32.onnx", tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert code == 0, err
    assert _check_line(out).endswith("(tolerance 1e-4 for float32 outputs)"), out
    assert "default" not in _check_line(out)
    check = json.loads((tmp_path / "r.json").read_text())["check"]
    assert check["rtol"] is None and check["tolerances"] == {"float32": 1e-4}
    code, out, _ = call(capsys, tmp_path / "f32.onnx", tmp_path / "o.onnx", "--rtol", "2.5e-5")
    assert code == 0 and _check_line(out).endswith("(tolerance 2.5e-5 for float32 outputs (--rtol))")
    mixed = conv_bn_model(extra_outputs=[
        (helper.make_node("Cast", ["y"], ["y16"], name="half", to=TensorProto.FLOAT16),
         helper.make_tensor_value_info("y16", TensorProto.FLOAT16, [None] * 4)),
        (helper.make_node("Shape", ["y"], ["shape"], name="shape"),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [4]))])
    onnx.save(mixed, tmp_path / "mixed.onnx")
    code, out, err = call(capsys, tmp_path / "mixed.onnx", tmp_path / "o.onnx")
    assert code == 0, err
    assert _check_line(out).endswith(
        "(tolerance 1e-4 for float32, 1e-2 for float16, exact for int64 outputs)"), out


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_take_the_input_mode_or_keep_their_own(capsys, tmp_path):
    """A new OUT (and OUT.data) gets IN's permission bits; an existing OUT keeps its own."""
    model = conv_bn_model(c=16)  # weights of 9 KiB: written to OUT.data when IN has external data
    onnx.save(model, tmp_path / "in.onnx")
    ext = onnx.ModelProto()
    ext.CopyFrom(model)
    onnx.save(ext, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    for src, mode in (("in.onnx", 0o640), ("in.onnx", 0o604), ("ext.onnx", 0o640), ("ext.onnx", 0o644)):
        os.chmod(tmp_path / src, mode)
        out = tmp_path / f"new_{mode:o}_{src}"
        code, _, err = call(capsys, tmp_path / src, out, "-q")
        assert code == 0, err
        written = [out] + ([tmp_path / (out.name + ".data")] if src == "ext.onnx" else [])
        assert written[-1].exists()
        assert [_mode(p) for p in written] == [mode] * len(written), (src, oct(mode))
    os.chmod(tmp_path / "in.onnx", 0o644)
    (tmp_path / "old.onnx").write_bytes(b"")
    os.chmod(tmp_path / "old.onnx", 0o600)
    code, _, err = call(capsys, tmp_path / "in.onnx", tmp_path / "old.onnx", "-q")
    assert code == 0, err
    assert _mode(tmp_path / "old.onnx") == 0o600 and onnx.load(tmp_path / "old.onnx").graph.node
    os.chmod(tmp_path / "ext.onnx", 0o640)
    code, _, err = call(capsys, tmp_path / "ext.onnx", "--in-place", "-q")
    assert code == 0, err
    assert _mode(tmp_path / "ext.onnx") == _mode(tmp_path / "ext.onnx.data") == 0o640
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".reparam")]
