"""Running ONNX models for the check: onnxruntime, or the ONNX reference evaluator where
onnxruntime has no kernel for the model (float64 convolutions, for one).

:func:`run_original` runs the input model on the engine that can (:func:`run_feeds` runs
any model there) with chosen values exposed as outputs (each folded block's, see
:func:`with_outputs`);
:func:`perturb` moves every floating-point weight of a model by one unit in the last place:
how far that moves its values measures the model's own rounding noise.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import BadInputError
from .frontends.onnx import save
from .frontends.onnx_check import first_line
from .frontends.onnx_file import PROTOBUF_LIMIT, data_size

ORT, REFERENCE = "onnxruntime", "the ONNX reference evaluator"


def session(model, threads: int = 0):
    """An onnxruntime CPU session for ``model``: an ``onnx.ModelProto`` (through a temporary
    file when it is large) or the path of an ONNX file (read by onnxruntime itself)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if isinstance(model, (str, os.PathLike)):
        return ort.InferenceSession(os.fspath(model), opts, providers=["CPUExecutionProvider"])
    if data_size(model) < PROTOBUF_LIMIT - (1 << 24):
        return ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        save(model, path, external=True)
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def load_model(model) -> onnx.ModelProto:
    """``model`` itself, or the model (with its external data) at a path."""
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(os.fspath(model))
    except Exception as e:
        raise BadInputError(f"cannot read {os.fspath(model)}: {first_line(e)}") from e


def _no_kernel(e: BaseException) -> bool:
    """onnxruntime refused a model for want of a kernel (an op at a type it does not run)."""
    return type(e).__name__ == "NotImplemented" or "Could not find an implementation" in str(e)


def run_original(model: onnx.ModelProto, names, feeds) -> tuple[str, list[dict]]:
    """``(engine, run_feeds(engine, model, names, feeds))``: onnxruntime, or the reference
    evaluator when onnxruntime has no kernel for one of ``model``'s ops; BadInputError when
    the model does not run."""
    engine = ORT
    try:
        try:
            return engine, run_feeds(ORT, model, names, feeds)
        except Exception as e:
            if not _no_kernel(e):
                raise
        engine = REFERENCE
        return engine, run_feeds(REFERENCE, model, names, feeds)
    except Exception as e:
        raise BadInputError(f"{engine} cannot run the input model: {first_line(e)}") from e


def with_outputs(model: onnx.ModelProto, names, copy: bool = True) -> onnx.ModelProto:
    """``model`` (a copy, unless not ``copy``) that also outputs the tensors ``names`` (its
    own outputs first)."""
    out = model
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names
                            if n not in have)
    return out


def run_feeds(engine: str, model: onnx.ModelProto, names, feeds) -> list[dict]:
    """``{name: array}`` for each feed: ``model``'s outputs ``names``, on ``engine``."""
    if engine == ORT:
        s = session(model)
        return [dict(zip(names, s.run(list(names), feed))) for feed in feeds]
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(model)
    return [dict(zip(names, ev.run(list(names), feed))) for feed in feeds]


def _nudged(array: np.ndarray, rng) -> np.ndarray:
    """``array`` with each element one unit in the last place up or down (at random)."""
    eps = np.finfo(array.dtype).eps
    sign = rng.choice(np.array([-1.0, 1.0], dtype=array.dtype), array.shape)
    return (array * (1 + eps * sign)).astype(array.dtype)


def perturb(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` itself, its floating-point initializers and Constant tensors each moved by
    about one ulp: how far its values move measures its own rounding noise."""
    rng = np.random.default_rng(seed)
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
    out = model
    g = out.graph
    tensors = list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant"
                                     for a in n.attribute if a.name == "value"]
    for t in tensors:
        if t.data_type in floats and t.data_location != TensorProto.EXTERNAL:
            t.CopyFrom(numpy_helper.from_array(_nudged(numpy_helper.to_array(t), rng), t.name))
    return out
