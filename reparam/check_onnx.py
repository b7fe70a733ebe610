"""Checking a fused ONNX model against the original with onnxruntime.

Random inputs (seeded) are fed to both models; every output must satisfy
``max|fused - ref| <= rtol * max|ref|``. Used by the CLI (``--check N``) and by
``reparam.fuse`` on ONNX models given ``example_inputs``.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import BadInputError, VerificationError
from .frontends.onnx import save
from .frontends.onnx_check import _first_line
from .frontends.onnx_file import PROTOBUF_LIMIT, data_size
from .frontends.onnx_lift import _dims

#: default tolerance (relative to max|reference|) per ONNX element type of an output
RTOL = {TensorProto.FLOAT: 1e-4, TensorProto.DOUBLE: 1e-9, TensorProto.FLOAT16: 1e-2,
        TensorProto.BFLOAT16: 5e-2}



def input_specs(model: onnx.ModelProto) -> list[tuple[str, int, tuple]]:
    """``(name, elem_type, dims)`` of the inputs a caller must feed."""
    inits = {t.name for t in model.graph.initializer}
    return [(i.name, i.type.tensor_type.elem_type, _dims(i) or ())
            for i in model.graph.input if i.name not in inits]


def _dtype_name(elem: int) -> str:
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:
        return TensorProto.DataType.Name(elem).lower() if elem in TensorProto.DataType.values() else "?"


def describe_inputs(model: onnx.ModelProto, only: str | None = None) -> str:
    """The inputs a caller must feed, as the model declares them: ``x float32 [N,3,224,224], ...``."""
    inits = {t.name for t in model.graph.initializer}
    parts = []
    for i in model.graph.input:
        if i.name in inits or only not in (None, i.name):
            continue
        dims = _dims(i)
        shape = "(shape not declared)" if dims is None else _fmt_dims(dims)
        parts.append(f"{i.name} {_dtype_name(i.type.tensor_type.elem_type)} {shape}")
    return ", ".join(parts) or "none"


def random_inputs(model: onnx.ModelProto, count: int, shapes: dict | None = None,
                  seed: int = 0) -> list[dict]:
    """``count`` feeds of random values; ``shapes[name]`` fixes an input's dynamic dims.

    Dynamic dimensions without a given shape are 1 for the first (batch)
    dimension; any other one is an error naming the input. A name in ``shapes``
    that is no input of the model is an error listing the model's inputs.
    """
    shapes = dict(shapes or {})
    names = {name for name, _, _ in input_specs(model)}
    unknown = [name for name in shapes if name not in names]
    if unknown:  # before any input's own problem: a misspelt name would be reported as that
        raise BadInputError(f"--input-shape {unknown[0]}:{','.join(map(str, shapes[unknown[0]]))}: "
                            f"{unknown[0]!r} is not an input of the model; its inputs: "
                            f"{describe_inputs(model)}")
    rng = np.random.default_rng(seed)
    specs = []
    for name, elem, dims in input_specs(model):
        if name in shapes:
            shape = tuple(int(s) for s in shapes.pop(name))
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s
                                              for d, s in zip(dims, shape)):
                raise BadInputError(f"--input-shape {name}:{','.join(map(str, shape))} does not "
                                    f"match the input's shape {_fmt_dims(dims)}")
        else:
            shape = []
            for k, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif k == 0:
                    shape.append(1)
                else:
                    raise BadInputError(
                        f"input {name!r} has dynamic shape {_fmt_dims(dims)}; give its size "
                        f"with --input-shape {name}:" + ",".join(
                            str(x) if isinstance(x, int) and x > 0 else "N" for x in dims))
            shape = tuple(shape)
        try:
            np_t = helper.tensor_dtype_to_np_dtype(elem)
        except Exception as e:
            raise BadInputError(f"input {name!r} has an unsupported type {elem}") from e
        specs.append((name, np_t, shape))
    feeds = []
    for _ in range(count):
        feed = {}
        for name, np_t, shape in specs:
            if np.issubdtype(np_t, np.floating):
                feed[name] = rng.standard_normal(shape).astype(np_t)
            elif np_t == np.bool_:
                feed[name] = rng.integers(0, 2, shape).astype(np_t)
            else:
                feed[name] = rng.integers(0, 4, shape).astype(np_t)
        feeds.append(feed)
    return feeds


def format_tolerances(tolerances: dict) -> str:
    """``1e-4 for float32 outputs``, ``1e-4 for float32, 1e-2 for float16 outputs``, ...

    ``tolerances`` maps an output dtype to the tolerance used for it (None: compared exactly).
    """
    def fmt(x):
        if x == 0 or 0.1 <= abs(x) < 1e4:
            return f"{x:g}"
        mantissa, exponent = f"{x:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

    parts = [f"{'exact' if tol is None else fmt(tol)} for {dtype}"
             for dtype, tol in tolerances.items()]
    return (", ".join(parts) + " outputs") if parts else "none (no outputs)"


def _fmt_dims(dims) -> str:
    return "[" + ",".join(str(d) if d not in (None, 0) else "?" for d in dims) + "]"


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


#: onnxruntime's names of the output types that have a default tolerance
_ORT_TYPES = {"tensor(float)": TensorProto.FLOAT, "tensor(double)": TensorProto.DOUBLE,
              "tensor(float16)": TensorProto.FLOAT16, "tensor(bfloat16)": TensorProto.BFLOAT16}


def verify(reference, fused, feeds: list[dict], rtol: float | None = None,
           progress=None, tolerances: dict | None = None) -> float:
    """Raise VerificationError unless ``fused`` matches ``reference`` on every feed.

    ``reference`` and ``fused`` are ``onnx.ModelProto`` or paths of ONNX files.
    Each output must satisfy ``max|fused - ref| <= rtol * max|ref|`` (``rtol``
    defaults to :data:`RTOL` for the output's type). Returns the worst ratio.
    ``tolerances``, a dict, receives the tolerance used per output dtype
    (``{"float32": 1e-4}``; None for outputs compared exactly, such as integers).

    The two sessions are never alive together (the reference runs every feed
    first), so a large model is in memory at most once; errors are raised in
    the order of a side-by-side run.
    """
    try:
        ref_s = session(reference)
    except Exception as e:
        raise BadInputError(f"onnxruntime cannot run the input model: {_first_line(e)}") from e
    if isinstance(reference, onnx.ModelProto):
        names = [o.name for o in reference.graph.output]
        elem = {o.name: o.type.tensor_type.elem_type for o in reference.graph.output}
    else:
        names = [o.name for o in ref_s.get_outputs()]
        elem = {o.name: _ORT_TYPES.get(o.type, 0) for o in ref_s.get_outputs()}
    refs, ref_error = [], None
    for k, feed in enumerate(feeds):
        if progress:
            progress(f"checking with onnxruntime {k + 1}/{len(feeds)}")
        try:
            refs.append(ref_s.run(names, feed))
        except Exception as e:
            ref_error = e
            break
    del ref_s
    try:
        got_s = session(fused)
    except Exception as e:
        raise VerificationError(f"onnxruntime cannot run the fused model: {_first_line(e)}") from e
    worst = 0.0
    for k, feed in enumerate(feeds):
        if k == len(refs):
            e = ref_error
            raise BadInputError(f"onnxruntime cannot run the input model: {_first_line(e)}") from e
        got = got_s.run(names, feed)
        for name, r, g_ in zip(names, refs[k], got):
            r, g_ = np.asarray(r), np.asarray(g_)
            if r.shape != g_.shape:
                raise VerificationError(f"output {name!r}: shape {g_.shape} != {r.shape}")
            if r.size == 0 or r.dtype.kind not in "fc":
                if tolerances is not None and r.dtype.kind not in "fc":
                    tolerances.setdefault(str(r.dtype), None)
                if not np.array_equal(r, g_):
                    raise VerificationError(f"output {name!r} differs")
                continue
            tol = rtol if rtol is not None else RTOL.get(elem[name], 1e-4)
            if tolerances is not None:
                tolerances[str(r.dtype)] = tol
            scale = float(np.abs(r.astype(np.float64)).max())
            diff = float(np.abs(g_.astype(np.float64) - r.astype(np.float64)).max())
            ratio = diff / scale if scale else diff
            if not ratio <= tol:
                raise VerificationError(f"output {name!r}: max|diff| = {diff:.3g} is {ratio:.3g} of "
                                        f"max|ref| = {scale:.3g}, above the tolerance {tol:g}")
            worst = max(worst, ratio)
    return worst
