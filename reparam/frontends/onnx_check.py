"""Validation of an input ONNX model, before anything is lifted from it.

:func:`validate` raises :class:`~reparam.errors.BadInputError` naming the first
thing wrong with a model: not a ModelProto, no graph, an opset of the default
domain the frontend does not read, a zero-size input dimension, external data
that was not loaded, a node reading a name nothing defines, a cycle, a graph
output nothing computes, or what the ONNX checker finds. Nodes out of
topological order are no error (:func:`topological_order` sorts them).
:func:`check_external_files` names a missing external data file before any is
read, and :func:`check_bn_params` BatchNormalization parameters no trained
model has (lifting calls it on the parameters it reads).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import BadInputError
from . import onnx_file
from .onnx_file import PROTOBUF_LIMIT, data_size


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def check_external_files(model: onnx.ModelProto, path: str) -> None:
    """Name the first external data file that is missing (before reading any of them)."""
    folder = os.path.dirname(os.path.abspath(path))
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        if not loc or not os.path.isfile(os.path.join(folder, loc)):
            raise BadInputError(f"{path}: external data file {loc!r} of initializer {t.name!r} "
                                f"is missing (looked in {folder})")


#: what to do with a PyTorch file given where an ONNX file is expected
TORCH_FILE_ADVICE = ("reparam reads ONNX files: in Python, load the weights into the nn.Module "
                     "they belong to and call reparam.fuse(model), or export the model to ONNX "
                     "first with torch.onnx.export(model, (x,), 'model.onnx')")


def sniff_non_onnx(path: str) -> str | None:
    """What a file that is plainly not ONNX looks like, from its first bytes (None: maybe ONNX).

    A PyTorch checkpoint (``torch.save``: a zip archive holding ``data.pkl``, or a
    pickle in the legacy format), a TorchScript archive (``torch.jit.save``), a
    safetensors file or another zip archive. No ONNX file starts like these: a
    serialized ModelProto starts with a field that exists (``ir_version``, tag 0x08).
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return ("looks like a TorchScript archive (written by torch.jit.save), not an ONNX "
                    f"model; {TORCH_FILE_ADVICE}")
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return ("looks like a PyTorch checkpoint (a zip archive written by torch.save), not an "
                    f"ONNX model; {TORCH_FILE_ADVICE}")
        return ("is a zip archive, not an ONNX model (an ONNX file is a single protobuf message, "
                "as written by torch.onnx.export or onnx.save)")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return (f"looks like a PyTorch checkpoint or another Python pickle (pickle protocol "
                f"{head[1]}, as written by torch.save), not an ONNX model; {TORCH_FILE_ADVICE}")
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 8 + n <= os.path.getsize(path):
            return ("looks like a safetensors weights file, not an ONNX model; "
                    f"{TORCH_FILE_ADVICE}")
    return None


#: opsets of the default domain whose operators the frontend reads (Pad-2 to the newest)
MIN_OPSET = 7


def _opset_error(model: onnx.ModelProto) -> str | None:
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not MIN_OPSET <= o.version <= newest:
            return (f"unsupported opset {o.version} of the default ONNX domain (reparam reads "
                    f"opsets {MIN_OPSET} to {newest})")
    return None


def _cycle(nodes) -> list[str] | None:
    """Labels of the nodes on a cycle of the data flow among ``nodes``, if there is one."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    state = [0] * len(nodes)  # 0 unvisited, 1 on the stack, 2 done
    for start in range(len(nodes)):
        stack = [(start, iter(nodes[start].input))]
        path = [start]
        state[start] = 1
        while stack:
            k, it = stack[-1]
            nxt = next((producer[i] for i in it if i in producer), None)
            if nxt is None:
                state[k] = 2
                stack.pop()
                path.pop()
            elif state[nxt] == 1:
                loop = path[path.index(nxt):] + [nxt]
                return [nodes[j].name or nodes[j].output[0] for j in loop]
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(nodes[nxt].input)))
                path.append(nxt)
    return None


def _outer_reads(node) -> set[str]:
    """Names the subgraphs of ``node`` (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for n in sub.node:
                names.update(i for i in list(n.input) + sorted(_outer_reads(n))
                             if i and i not in local)
                local.update(n.output)
    return names


def topological_order(nodes) -> list[int] | None:
    """None when every node comes after the producers of what it reads (subgraph reads
    included); else the node indices in a topological order that keeps the file's order
    wherever it can (the first ready node first). A cycle leaves its nodes out."""
    import heapq

    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    needs = [{producer[i] for i in set(n.input) | _outer_reads(n) if i in producer} - {k}
             for k, n in enumerate(nodes)]
    if all(max(d, default=-1) < k for k, d in enumerate(needs)):
        return None
    users: dict[int, list[int]] = {}
    for k, d in enumerate(needs):
        for j in d:
            users.setdefault(j, []).append(k)
    waiting = [len(d) for d in needs]
    ready = [k for k, w in enumerate(waiting) if not w]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users.get(k, ()):
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, u)
    return order


def sorted_copy(model: onnx.ModelProto, order: list[int]) -> onnx.ModelProto:
    """``model`` with its graph's nodes in ``order`` (see :func:`topological_order`)."""
    out = onnx.ModelProto()
    onnx_file.copy_fields(model, out, skip=("graph",))
    onnx_file.copy_fields(model.graph, out.graph, skip=("node",))
    out.graph.node.extend(model.graph.node[k] for k in order)
    return out


def validate(model: onnx.ModelProto, what: str = "model") -> None:
    """Raise BadInputError unless ``model`` (also a light one, from
    :func:`~reparam.frontends.onnx.load`) is a well-formed ONNX model."""
    if not isinstance(model, onnx.ModelProto):
        raise BadInputError(f"{what}: expected an onnx.ModelProto, got {type(model).__name__}")
    g = model.graph
    if model.ir_version <= 0 or not model.HasField("graph") or not (len(g.node) or len(g.output)):
        raise BadInputError(f"{what}: not an ONNX model (no ir_version or empty graph)")
    opset_error = _opset_error(model)
    if opset_error:
        raise BadInputError(f"{what}: {opset_error}")
    inits = {t.name for t in g.initializer}
    for i in g.input:
        dims = i.type.tensor_type.shape.dim if i.type.HasField("tensor_type") else ()
        if i.name not in inits and any(d.HasField("dim_value") and d.dim_value == 0 for d in dims):
            shape = ",".join(str(d.dim_value) if d.HasField("dim_value") else "?" for d in dims)
            raise BadInputError(f"{what}: input {i.name!r} has a zero-size dimension (shape [{shape}])")
    names = [t.name for t in g.initializer
             if t.data_location == TensorProto.EXTERNAL and not onnx_file.is_lazy(t)]
    if names:
        raise BadInputError(f"{what}: initializer {names[0]!r} keeps its data in an external file "
                            "that was not loaded (load the model with its external data)")
    defined = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    defined |= {t.values.name for t in g.sparse_initializer}
    computed = {o for n in g.node for o in n.output}
    for node in g.node:
        for name in node.input:
            if name not in defined | computed:
                label = node.name or (node.output[0] if node.output else node.op_type)
                raise BadInputError(
                    f"{what}: node {label!r} ({node.op_type}) reads {name!r}, which no node, "
                    "graph input or initializer defines (missing initializer?)")
    order = topological_order(g.node)
    if order is not None and len(order) < len(g.node):
        loop = _cycle(g.node) or ["a node", "a subgraph reading its output", "that node"]
        raise BadInputError(f"{what}: the graph has a cycle: {' -> '.join(loop)}")
    defined |= computed
    for out in g.output:
        if out.name not in defined:
            raise BadInputError(f"{what}: graph output {out.name!r} is not computed by the graph")
    if order is not None:  # the checker wants sorted nodes: it checks them as they will be
        model = sorted_copy(model, order)
    if any(onnx_file.is_lazy(t) for t in g.initializer):
        model = onnx_file.checkable(model)
    if data_size(model) < PROTOBUF_LIMIT - (1 << 24):
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise BadInputError(f"{what}: invalid ONNX model: {first_line(e)}") from e


def check_bn_params(label: str, params) -> None:
    """Raise BadInputError for BatchNormalization parameters no trained model has."""
    for key, p in zip(("scale", "bias", "mean", "variance"), params):
        p = np.asarray(p).reshape(-1)
        if p.size == 0:
            raise BadInputError(f"BatchNormalization {label!r}: zero-size {key} (no channels)")
        if p.dtype.kind == "f" and not np.isfinite(p).all():
            k = int(np.flatnonzero(~np.isfinite(p))[0])
            raise BadInputError(f"BatchNormalization {label!r}: {key} is {p[k]} at channel {k} "
                                "(NaN or Inf)")
    var = np.asarray(params[3]).reshape(-1)
    if var.dtype.kind == "f" and (var < 0).any():
        k = int(np.flatnonzero(var < 0)[0])
        raise BadInputError(f"BatchNormalization {label!r}: negative variance {var[k]:g} at channel {k}")
