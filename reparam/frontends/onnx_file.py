"""Large ONNX files without holding their weights: initializers read from the file on demand.

A model of a few hundred megabytes loaded with ``onnx.load`` keeps every weight
in one protobuf arena that is freed only with the whole model; folding it also
needs float64 copies of those weights and the fused model's own. To stay within
a small multiple of the file size, :func:`reparam.frontends.onnx.load` reads
such a model (one whose data is embedded in the file) *light* with
:func:`light_load`: every large floating-point initializer keeps its name, type
and dims, and instead of its bytes records where they lie in the file
(``data_location = EXTERNAL`` with ``location``, ``offset``, ``length`` and a
``__reparam_lazy__`` marker). The file is scanned in the protobuf wire format
(:func:`_spans`), and only the bytes of everything else are parsed.

Such a light model is internal to reparam: constants are read with
:func:`read`, the ONNX checker sees :func:`checkable`'s copy of it, and lowering
writes the initializers it keeps back in full with :func:`materialize` (byte for
byte the original TensorProto), so a fused model never refers to the input file.

Also here: the size facts that decide how a model is checked and written
(:data:`PROTOBUF_LIMIT`, :func:`data_size`), the protobuf field copies light
copies are made with (:func:`copy_fields`), and glibc malloc helpers.
"""
from __future__ import annotations

import math
import mmap
import os

import numpy as np
from onnx import ModelProto, TensorProto, helper

#: protobuf cannot serialize a message of 2 GiB or more
PROTOBUF_LIMIT = 2**31 - 1
MARKER = "__reparam_lazy__"
HELD = "__reparam_held__"
#: bytes per element of the fixed-size element types
_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2,
             TensorProto.BFLOAT16: 2, TensorProto.INT64: 8, TensorProto.INT32: 4,
             TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2,
             TensorProto.BOOL: 1}
#: element types read as plain numpy arrays (what ``numpy_helper.to_array`` returns for them)
_DTYPES = {TensorProto.FLOAT: np.dtype("<f4"), TensorProto.DOUBLE: np.dtype("<f8"),
           TensorProto.FLOAT16: np.dtype("<f2")}


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _spans(buf, start: int, end: int):
    """``(field number, wire type, field start, value start, field end)`` of the fields of
    one message (the value of a length-delimited field lies in ``value start:field end``)."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos)
        wire = key & 7
        value = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, value = _varint(buf, pos)
            pos = value + n
        else:  # groups: not written by any ONNX tool
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, wire, at, value, pos
    if pos != end:
        raise ValueError("truncated protobuf message")


def light_load(path, min_bytes: int) -> ModelProto | None:
    """The model in the ONNX file ``path``, its floating-point initializers of more than
    ``min_bytes`` bytes light (see the module docstring): ``onnx.load`` without reading
    their bytes. None when no initializer qualifies or the file is not laid out as
    ONNX writers lay it out (one graph field), or it has external data; then load it whole.
    Raises ValueError (or protobuf's DecodeError) on a file that is not protobuf."""
    path = os.path.abspath(path)
    model, graph, inits = bytearray(), bytearray(), []
    lazy = graphs = 0
    external = False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for field, wire, at, value, end in _spans(mm, 0, len(mm)):
            if field != 7 or wire != 2:  # ModelProto.graph
                model += mm[at:end]
                continue
            graphs += 1
            for gfield, gwire, gat, gvalue, gend in _spans(mm, value, end):
                if gfield != 5 or gwire != 2:  # GraphProto.initializer
                    graph += mm[gat:gend]
                    continue
                t = _light_tensor(mm, gvalue, gend, path, min_bytes)
                lazy += is_lazy(t)
                external |= t.data_location == TensorProto.EXTERNAL and not is_lazy(t)
                inits.append(t)
    if not lazy or graphs != 1 or external:
        return None
    light = ModelProto.FromString(bytes(model))
    light.graph.MergeFromString(bytes(graph))
    light.graph.initializer.extend(inits)
    return light


def _light_tensor(mm, start: int, end: int, path: str, min_bytes: int) -> TensorProto:
    """The TensorProto in ``mm[start:end]``, light when its raw data qualifies."""
    rest, raw = bytearray(), None
    for field, wire, at, value, stop in _spans(mm, start, end):
        if field == 9 and wire == 2:  # TensorProto.raw_data
            raw = (value, stop - value)
        else:
            rest += mm[at:stop]
    t = TensorProto.FromString(bytes(rest))
    dtype = _DTYPES.get(t.data_type)
    if (raw is None or dtype is None or raw[1] <= min_bytes or t.external_data
            or int(np.prod(t.dims, dtype=np.int64)) * dtype.itemsize != raw[1]):
        return TensorProto.FromString(mm[start:end])
    marker = str(t.data_location) if t.HasField("data_location") else ""
    for key, v in (("location", path), ("offset", str(raw[0])), ("length", str(raw[1])),
                   (MARKER, marker)):
        e = t.external_data.add()
        e.key, e.value = key, v
    t.data_location = TensorProto.EXTERNAL
    return t


def checkable(model: ModelProto) -> ModelProto:
    """A copy of a light ``model`` for the ONNX checker, in which its lazy initializers are
    graph inputs of their type and shape (the checker would open their file by a path
    relative to the current folder and read all of it; their lengths were checked
    against their dims when the model was loaded)."""
    out = ModelProto()
    copy_fields(model, out, skip=("graph",))
    copy_fields(model.graph, out.graph, skip=("initializer",))
    inputs = {i.name for i in out.graph.input}
    for t in model.graph.initializer:
        if not is_lazy(t):
            out.graph.initializer.append(t)
        elif t.name not in inputs:
            out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return out


def tensor_size(t: TensorProto) -> int:
    """The serialized size of ``t``, exactly; for a tensor holding its values as raw_data
    computed from its dims (reading raw_data, or ``ByteSize``, copies or walks the bytes:
    a quarter of a second per 100 MB)."""
    if not t.HasField("raw_data") or t.data_type not in _ITEMSIZE:
        return t.ByteSize()
    rest = TensorProto()
    _copy_tensor_fields(t, rest, ("raw_data",))
    n = math.prod(t.dims) * _ITEMSIZE[t.data_type]
    return rest.ByteSize() + 1 + _varint_size(n) + n  # raw_data: field 9, one tag byte


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def data_size(model: ModelProto) -> int:
    """Bytes of tensor data held in the model (initializers and Constant nodes)."""
    size = sum(tensor_size(t) for t in model.graph.initializer)
    size += sum(a.t.ByteSize() for n in model.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value")
    return size


def copy_fields_into(dst, fd, val) -> None:
    if hasattr(val, "extend"):  # repeated field
        getattr(dst, fd.name).extend(val)
    elif fd.message_type is not None:
        getattr(dst, fd.name).CopyFrom(val)
    else:
        setattr(dst, fd.name, val)


def copy_fields(src, dst, skip=()) -> None:
    for fd, val in src.ListFields():
        if fd.name not in skip:
            copy_fields_into(dst, fd, val)


def _copy_tensor_fields(src: TensorProto, dst: TensorProto, skip: tuple) -> None:
    """Every field of ``src`` but those named in ``skip`` into ``dst`` (without reading
    their values)."""
    for fd in src.DESCRIPTOR.fields:
        if fd.name in skip:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            values = getattr(src, fd.name)
            if len(values):
                getattr(dst, fd.name).extend(values)
        elif src.HasField(fd.name):
            if fd.message_type is not None:
                getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))
            else:
                setattr(dst, fd.name, getattr(src, fd.name))


def map_large_allocations(threshold: int = 1 << 20) -> None:
    """Have glibc's malloc give each allocation of ``threshold`` bytes or more its own
    mapping, handed back to the system when freed. By default the threshold rises to
    the largest block freed so far (up to 32 MiB) and freed blocks below it stay in the
    heap, so a process that reads, folds and writes weights of 1 - 32 MiB keeps several
    copies of them resident. For a process that handles large models, such as the
    command line; a no-op without glibc. Also :func:`no_huge_pages`."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, ctypes.c_int(threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    no_huge_pages()


def no_huge_pages() -> None:
    """Have numpy stop advising the kernel to back its large arrays with huge pages (what
    ``NUMPY_MADVISE_HUGEPAGE=0`` does at import). Folding writes each weight once into fresh
    memory and reads it back a few times, which gains nothing from huge pages, while their
    first touch costs more than small pages' where the kernel must zero (or a virtual
    machine's host must provide) 2 MiB at once: on the 2-core VM of issue 14, RepVGG-B3's
    CLI time fell from 4.8 s to 3.1 s without them. A no-op where numpy has no such switch."""
    core = getattr(np, "_core", None) or np.core  # numpy 2, numpy 1
    switch = getattr(core.multiarray, "_set_madvise_hugepage", None)
    if switch is not None:
        switch(False)


def release_freed_memory() -> None:
    """Hand memory freed inside the process back to the system where the C library can
    (glibc's ``malloc_trim``): freed blocks below malloc's mmap threshold otherwise stay
    resident, so a dropped model would still count in the process's memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def is_lazy(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL and any(e.key == MARKER for e in t.external_data)


def where(t: TensorProto):
    """``(file, offset, length, data_location)`` of the lazy ``t``."""
    info = {e.key: e.value for e in t.external_data}
    return info["location"], int(info["offset"]), int(info["length"]), info[MARKER]


def _mapped(t: TensorProto, dtype: np.dtype) -> np.ndarray:
    """The bytes of the lazy ``t`` in its file, as a read-only 1-d array of ``dtype``: a view
    of the file's pages (mapped, not copied; unmapped with the last view)."""
    path, offset, length, _ = where(t)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # a mapping starts at a page
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < offset + length:
            raise OSError(f"{path} is shorter than it was when it was read")
        mm = mmap.mmap(f.fileno(), offset + length - start, access=mmap.ACCESS_READ,
                       offset=start)
    return np.frombuffer(mm, dtype=dtype, count=length // dtype.itemsize, offset=offset - start)


def read(t: TensorProto) -> np.ndarray:
    """The value of a lazy initializer, as ``numpy_helper.to_array`` reads it, but read-only
    (see :func:`_mapped`)."""
    dtype = _DTYPES[t.data_type]
    return _mapped(t, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(tuple(t.dims))


def hold(t: TensorProto, data, held: dict) -> None:
    """Make ``t`` (a new initializer: name, type and dims set, no data) a *held* tensor:
    its bytes are ``data`` (bytes, or a C-contiguous array holding them as ONNX's
    raw_data does, little-endian), kept in ``held`` under its name instead of in the
    proto, which is marked ``data_location = EXTERNAL`` with a ``__reparam_held__``
    entry. Only :func:`reparam.frontends.onnx.save` (given ``held``) writes such a model:
    it writes ``data`` straight to the file, where a proto's raw_data would have been
    copied three times (into the proto, and twice more serializing it)."""
    location = str(t.data_location) if t.HasField("data_location") else ""
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = HELD, location
    held[t.name] = data


def hold_lazy(t: TensorProto, dst: TensorProto, held: dict) -> None:
    """Make ``dst`` the original TensorProto of the lazy ``t``, held (see :func:`hold`): its
    bytes stay in the file's pages until they are written."""
    _copy_tensor_fields(t, dst, skip=("external_data", "data_location"))
    location = where(t)[3]
    if location:
        dst.data_location = int(location)
    hold(dst, _mapped(t, np.dtype(np.uint8)), held)


def is_held(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL and any(e.key == HELD for e in t.external_data)


def held_pieces(t: TensorProto) -> tuple[bytes, bytes]:
    """The serialized fields of the held ``t`` before and after its raw_data (field 9): with
    its bytes between them, ``t`` filled (:func:`fill`) and serialized as protobuf does
    (fields in number order)."""
    low, high = TensorProto(), TensorProto()
    for fd, val in t.ListFields():
        if fd.name not in ("external_data", "data_location"):
            copy_fields_into(low if fd.number < 9 else high, fd, val)
    location = next(e.value for e in t.external_data if e.key == HELD)
    if location:
        high.data_location = int(location)
    return low.SerializeToString(), high.SerializeToString()


def fill(t: TensorProto, data) -> None:
    """Make the held ``t`` an ordinary TensorProto holding ``data`` as its raw_data."""
    location = next(e.value for e in t.external_data if e.key == HELD)
    del t.external_data[:]
    t.ClearField("data_location")
    if location:
        t.data_location = int(location)
    t.raw_data = bytes(memoryview(data).cast("B"))


def materialize(t: TensorProto, dst: TensorProto) -> None:
    """Make ``dst`` the original TensorProto of the lazy ``t``, its bytes read from the file."""
    path, offset, length, location = where(t)
    _copy_tensor_fields(t, dst, skip=("external_data",))
    dst.ClearField("data_location")
    if location:
        dst.data_location = int(location)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"{path} is shorter than it was when it was read")
    dst.raw_data = data
