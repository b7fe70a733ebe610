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
from .frontends import onnx_file
from .frontends.onnx import load, save
from .frontends.onnx_check import first_line
from .frontends.onnx_file import PROTOBUF_LIMIT, data_size

ORT, REFERENCE = "onnxruntime", "the ONNX reference evaluator"
#: the key :func:`perturb` adds to a lazy initializer's external data: nudge it when read
NUDGE = "__reparam_nudge__"


def session(model, threads: int = 0):
    """An onnxruntime CPU session for ``model``: an ``onnx.ModelProto`` (a light one, or a
    large one, through files in a temporary folder) or the path of an ONNX file (read by
    onnxruntime itself). Its graph optimizations are off: the model runs as it is written
    (onnxruntime's own fusions, Conv+BatchNorm among them, would round the original as a
    fold does), and the session is made in a fraction of the time (RepVGG-B3: 0.15 s
    instead of 2.4 s)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if isinstance(model, (str, os.PathLike)):
        return ort.InferenceSession(os.fspath(model), opts, providers=["CPUExecutionProvider"])
    light = any(onnx_file.is_lazy(t) for t in model.graph.initializer)
    if not light and data_size(model) < PROTOBUF_LIMIT - (1 << 24):
        return ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        values = {}
        if light:
            values = _write_light(model, path)
        else:
            save(model, path, external=True)
        held = [(a, ort.OrtValue.ortvalue_from_numpy(a)) for a in values.values()]
        for name, (_, v) in zip(values, held):
            opts.add_initializer(name, v)  # (onnxruntime reads their memory: kept below)
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        s.held_values = held
        return s


def _write_light(model: onnx.ModelProto, path: str) -> dict:
    """Write the light ``model`` as an ONNX file at ``path`` whose lazy initializers are
    external data read where they lie, in their own file, through a hard link to it beside
    ``path`` (onnxruntime refuses a path out of the model's folder, symbolic links
    included). Returns the values of those :func:`perturb` marked, by name (nudged: for
    the session to take in place of the file's, see :func:`session`). Where no link can be
    made (another file system) the values are written to one data file beside it instead,
    nudged ones included, one tensor at a time: the model's weights are never all in
    memory."""
    out = onnx.ModelProto()
    onnx_file.copy_fields(model, out, skip=("graph",))
    onnx_file.copy_fields(model.graph, out.graph, skip=("initializer",))
    folder = os.path.dirname(path)
    data = os.path.basename(path) + ".data"
    links: dict[str, str | None] = {}  # source file -> its link's name (None: no link)
    nudged: dict[str, np.ndarray] = {}
    with open(os.path.join(folder, data), "wb") as f:
        for t in model.graph.initializer:
            if not onnx_file.is_lazy(t):
                out.graph.initializer.append(t)
                continue
            source, offset, length, _ = onnx_file.where(t)
            if source not in links:
                links[source] = _link(source, folder, f"source{len(links)}.data")
            if links[source] is not None:
                location = links[source]
                if any(e.key == NUDGE for e in t.external_data):
                    nudged[t.name] = _lazy_value(t)
            else:
                value = _lazy_value(t)
                f.seek(-f.tell() % 4096, os.SEEK_CUR)  # (aligned: onnxruntime may map it)
                location, offset = data, f.tell()
                f.write(np.ascontiguousarray(value, value.dtype.newbyteorder("<")).data)
                length = f.tell() - offset
                del value
            n = out.graph.initializer.add()
            n.name, n.data_type = t.name, t.data_type
            n.dims.extend(t.dims)
            n.data_location = TensorProto.EXTERNAL
            for key, v in (("location", location), ("offset", str(offset)),
                           ("length", str(length))):
                e = n.external_data.add()
                e.key, e.value = key, v
    onnx.save(out, path)
    return nudged


def _link(source: str, folder: str, name: str) -> str | None:
    """``name``, a hard link in ``folder`` to the file ``source``; None where none can be made."""
    try:
        os.link(source, os.path.join(folder, name))
    except OSError:
        return None
    return name


def _lazy_value(t: TensorProto) -> np.ndarray:
    """The value of a lazy initializer, nudged if :func:`perturb` marked it."""
    value = onnx_file.read(t)
    seed = next((e.value for e in t.external_data if e.key == NUDGE), None)
    return value if seed is None else _nudged(value, np.random.default_rng(int(seed)))


def materialized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or for a light one a copy holding all its values (for the
    reference evaluator, which reads only embedded tensors)."""
    if not any(onnx_file.is_lazy(t) for t in model.graph.initializer):
        return model
    out = onnx.ModelProto()
    onnx_file.copy_fields(model, out, skip=("graph",))
    onnx_file.copy_fields(model.graph, out.graph, skip=("initializer",))
    for t in model.graph.initializer:
        if onnx_file.is_lazy(t):
            out.graph.initializer.append(numpy_helper.from_array(_lazy_value(t), t.name))
        else:
            out.graph.initializer.append(t)
    return out


def load_model(model) -> onnx.ModelProto:
    """``model`` itself, or the model at a path: light if it is large (see
    :func:`reparam.frontends.onnx.load`), with its external data if it has some."""
    return model if isinstance(model, onnx.ModelProto) else load(model)[0]


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

    ev = ReferenceEvaluator(materialized(model))
    return [dict(zip(names, ev.run(list(names), feed))) for feed in feeds]


def _nudged(array: np.ndarray, rng) -> np.ndarray:
    """``array`` with each element multiplied by ``1 - eps`` or ``1 + eps`` (at random, in
    its own dtype): moved by one or two units in the last place, down or up. (The random
    choices are bits of random bytes, one per element: for the 123 M weights of RepVGG-B3
    that is a quarter of the time of drawing one integer per element.)"""
    eps = np.finfo(array.dtype).eps
    up = np.unpackbits(np.frombuffer(rng.bytes(-(-array.size // 8)), np.uint8),
                       count=array.size).reshape(array.shape)
    factors = up.astype(array.dtype)
    factors *= 2 * eps
    factors += 1 - eps  # exactly 1 - eps or 1 + eps
    factors *= array
    return factors


def perturb(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` itself, its floating-point initializers and Constant tensors each moved by
    about one ulp: how far its values move measures its own rounding noise. A light
    model's lazy initializers are marked, and nudged when they are read."""
    rng = np.random.default_rng(seed)
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
    out = model
    g = out.graph
    tensors = list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant"
                                     for a in n.attribute if a.name == "value"]
    for k, t in enumerate(tensors):
        if t.data_type not in floats:
            continue
        if onnx_file.is_lazy(t):
            e = t.external_data.add()
            e.key, e.value = NUDGE, str(seed * 1_000_003 + k)
        elif t.data_location != TensorProto.EXTERNAL:
            t.CopyFrom(numpy_helper.from_array(_nudged(numpy_helper.to_array(t), rng), t.name))
    return out
