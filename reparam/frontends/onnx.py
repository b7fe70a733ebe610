"""ONNX frontend: read an ONNX file, fold the model, write it back.

:func:`load` reads and validates a file (a large one light: see
:mod:`reparam.frontends.onnx_file`); :func:`fuse_model` lifts the model into
the IR (:mod:`reparam.frontends.onnx_lift`), rewrites it and lowers it back
(:mod:`reparam.frontends.onnx_lower`); :func:`save` writes a model atomically,
streamed or with external data where it is large. The checks of an input model
are in :mod:`reparam.frontends.onnx_check`.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import Counter

import onnx
from onnx import TensorProto

from ..errors import BadInputError
from . import onnx_file
from .onnx_check import (check_external_files, first_line, sniff_non_onnx, sorted_copy,
                         topological_order, validate)
from .onnx_file import PROTOBUF_LIMIT, copy_fields_into, data_size
from .onnx_lift import SMALL_INITIALIZER, lift
from .onnx_lower import lower

#: a file at least this large with its data inside is loaded light: its large initializers
#: are read from the file when needed (see :mod:`reparam.frontends.onnx_file`)
LAZY_FILE_BYTES = 64 << 20


# --- loading and saving -----------------------------------------------------------------

def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def load(path) -> tuple[onnx.ModelProto, bool]:
    """Read and validate an ONNX file (and its external data); returns ``(model, external)``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadInputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise BadInputError(f"{path}: is a directory, not an ONNX file")
    if os.path.getsize(path) == 0:
        raise BadInputError(f"{path}: empty file (0 bytes), not an ONNX model")
    kind = sniff_non_onnx(path)
    if kind:
        raise BadInputError(f"{path}: {kind}")
    light = None
    if os.path.getsize(path) >= LAZY_FILE_BYTES:
        try:
            light = onnx_file.light_load(path, SMALL_INITIALIZER)
        except Exception:  # not protobuf as expected: onnx.load below names what is wrong
            light = None
    if light is not None:
        validate(light, path)
        return light, False
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, onnx others
        raise BadInputError(f"{path}: not an ONNX model (cannot parse: {first_line(e)})") from e
    external = uses_external_data(model)
    if external:
        check_external_files(model, path)
        try:
            onnx.external_data_helper.load_external_data_for_model(
                model, os.path.dirname(os.path.abspath(path)))
        except Exception as e:
            raise BadInputError(f"{path}: cannot read its external data: {first_line(e)}") from e
    validate(model, path)
    return model, external


def save(model: onnx.ModelProto, path, external: bool | None = None,
         held: dict | None = None) -> None:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then rename).

    Tensor data goes to ``<name>.data`` beside it when ``external`` is true, or
    when ``external`` is None and the model would not fit in one protobuf.
    ``held``: the bytes of the model's held initializers by name (see
    :func:`fuse_model`), written from there. Nothing is left at ``path`` (or
    beside it) when writing fails.
    """
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    held = held or {}
    if external is None:
        size = data_size(model) + sum(memoryview(d).nbytes for d in held.values())
        external = size >= PROTOBUF_LIMIT - (1 << 24)
    tmpdir = tempfile.mkdtemp(prefix=".reparam-", dir=folder)
    try:
        tmp = os.path.join(tmpdir, base)
        data_name = base + ".data"
        if external:
            work = onnx.ModelProto()
            work.CopyFrom(model)  # marking tensors external rewrites the proto
            for t in work.graph.initializer:
                if onnx_file.is_held(t):
                    onnx_file.fill(t, held[t.name])
            # (not save_as_external_data=True: it refuses when a file named like the data
            # file lies in the current directory, whatever the folder it writes to)
            for t in _initializers(work.graph):
                if t.HasField("raw_data") and len(t.raw_data) >= 1024:
                    onnx.external_data_helper.set_external_data(t, data_name)
            onnx.save(work, tmp)  # writes the marked tensors to data_name beside tmp
            if os.path.exists(os.path.join(tmpdir, data_name)):
                os.replace(os.path.join(tmpdir, data_name), os.path.join(folder, data_name))
        elif held or _element_bytes(model) >= LAZY_FILE_BYTES:
            _save_streamed(model, tmp, held)
        else:
            onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))
        os.rmdir(tmpdir)


def _initializers(graph):
    """The initializers of ``graph`` and of its subgraphs (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _initializers(sub)


def _element_bytes(model: onnx.ModelProto) -> int:
    """Roughly the bytes of the initializers' values (from their dims; no serialization)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer) * 4


def _nbytes(data) -> int:
    return memoryview(data).nbytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _save_streamed(model: onnx.ModelProto, path, held: dict | None = None) -> None:
    """``onnx.save(model, path)``, byte for byte, serializing one initializer at a time.

    Serializing a whole model holds it twice more (protobuf's buffer and the
    Python bytes); here the fields around the graph's initializers are
    serialized apart and each initializer is written as it is serialized, in
    protobuf's field order (ModelProto.graph is field 7, GraphProto.initializer
    field 5). A held initializer (its bytes in ``held``, see
    :func:`reparam.frontends.onnx_file.hold`) is written as it would be filled: its
    other fields serialized around its bytes, which are written as they are.
    """
    held = held or {}
    head, tail, ghead, gtail = onnx.ModelProto(), onnx.ModelProto(), onnx.GraphProto(), onnx.GraphProto()
    for fd, val in model.ListFields():
        if fd.number != 7:
            copy_fields_into(head if fd.number < 7 else tail, fd, val)
    for fd, val in model.graph.ListFields():
        if fd.number != 5:
            copy_fields_into(ghead if fd.number < 5 else gtail, fd, val)
    inits = model.graph.initializer
    pieces = [onnx_file.held_pieces(t) if onnx_file.is_held(t) else None for t in inits]
    sizes = [onnx_file.tensor_size(t) if p is None else
             len(p[0]) + 1 + len(_varint(_nbytes(held[t.name]))) + _nbytes(held[t.name]) + len(p[1])
             for t, p in zip(inits, pieces)]
    first, last = ghead.SerializeToString(), gtail.SerializeToString()
    graph_len = len(first) + len(last) + sum(1 + len(_varint(n)) + n for n in sizes)
    with open(path, "wb") as f:
        f.write(head.SerializeToString())
        if model.HasField("graph"):
            f.write(b"\x3a" + _varint(graph_len) + first)  # field 7, length-delimited
            for t, n, p in zip(inits, sizes, pieces):
                if p is not None:  # held: (fields before raw_data, raw_data, fields after)
                    data = held[t.name]
                    f.write(b"\x2a" + _varint(n) + p[0] + b"\x4a" + _varint(_nbytes(data)))
                    f.write(memoryview(data).cast("B"))
                    f.write(p[1])
                    continue
                data = t.SerializeToString()
                if len(data) != n:  # (raw_data of another length than its dims say)
                    raise BadInputError(f"initializer {t.name!r}: {len(data)} bytes where its "
                                        f"dims and type make {n}")
                f.write(b"\x2a" + _varint(n))  # field 5, length-delimited
                f.write(data)
                del data
            f.write(last)
        f.write(tail.SerializeToString())


# --- the whole ONNX path ---------------------------------------------------------------------

def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                   for n in model.graph.node)


def fuse_model(model: onnx.ModelProto, rules, *, progress=None, what: str = "model",
               validated: bool = False, blocks: list | None = None, held: dict | None = None):
    """Fold ``model`` (not modified) with ``rules``; returns ``(ModelProto, Report)``.

    The report's ``before``/``after`` are ONNX operator counts. ``validated``:
    the model came from :func:`load`, which already checked it. ``blocks``, a list,
    receives the values the fused model computes anew
    (:class:`~reparam.frontends.onnx_lower.Block`), for the check. ``held``, a dict:
    the fused model's new initializers (and a light model's weights it keeps) are held
    there, not in the proto (see :func:`reparam.frontends.onnx_file.hold`): such a model
    is only for :func:`save` with the same ``held``, which writes each weight's bytes as
    they are instead of copying them three times.
    """
    from ..rewrite import run

    say = progress or (lambda msg: None)
    if not validated:
        validate(model, what)
    original, notes = model, []
    order = topological_order(model.graph.node)
    if order is not None:
        model = sorted_copy(model, order)
        notes.append("note: the input's nodes were not in topological order (onnxruntime sorts "
                      "them); the output's are")
    say("lifting")
    lifted = lift(model)
    say("rewriting")
    report = run(lifted.graph, rules)
    say("lowering")
    fused = lower(lifted, release=True, blocks=blocks, held=held)
    for n in lifted.graph.nodes:  # the IR is cyclic (inputs <-> users): let its float64
        n.attrs.clear()           # weights go now, not at the next garbage collection
    report.before, report.after = op_counts(original), op_counts(fused)
    report.notes.extend(notes + lifted.notes)
    return fused, report
