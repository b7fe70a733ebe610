"""Lowering for the ONNX frontend: the ONNX model computing a lifted (and rewritten) IR.

Every IR node lifted from an ONNX node has ``origin`` = :class:`NodeOrigin`
(its index in the graph and which input slots are IR inputs). Lowering copies
that NodeProto byte for byte, only renaming inputs whose producer a rewrite
replaced; new ``conv``/``conv_transpose``/``add`` nodes become Conv (Gemm for a
linear layer)/ConvTranspose/Add nodes with fresh initializers (equal ones written
once). A new node that computes a graph output, or a value a subgraph reads by
name, carries that name itself (an Identity copies it for any further name), so
every name is defined once. Then nodes and initializers that only served folded
nodes are dropped, Identity and inference Dropout nodes no output name needs are
bypassed, value_info is re-inferred, and graph inputs, outputs (names, dynamic
dimensions), opset imports, metadata and every other model field are kept. The
values new nodes compute in place of original ones are listed as :class:`Block`
for the check.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..ir import Node
from ..kernel import Conv
from . import onnx_file
from .onnx_file import copy_fields
from .onnx_lift import (Lifted, NodeOrigin, OutputsOrigin, TensorOrigin, implicit_inputs,
                        infer_value_info)



class _Names:
    def __init__(self, taken):
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def _live(nodes, outputs) -> list[bool]:
    """Which of ``nodes`` (in topological order) contribute to ``outputs``."""
    needed = set(outputs)
    live = [False] * len(nodes)
    for k in range(len(nodes) - 1, -1, -1):
        n = nodes[k]
        if any(o in needed for o in n.output if o):
            live[k] = True
            needed.update(i for i in n.input if i)
            needed.update(implicit_inputs(n))
    return live


def _used_names(nodes, outputs) -> set[str]:
    used = set(outputs)
    for n in nodes:
        used.update(n.input)
        used.update(implicit_inputs(n))
    return used


def _early(nodes, source) -> list:
    """``nodes`` with each new one (not in ``source``) moved up to just after its last producer.

    A rewrite inserts the nodes it builds where the nodes they replace ended
    (e.g. a merged branch conv at its Add tree's root, after the other
    branches); running them as soon as their inputs exist restores the order
    the model was written in, which the runtime's sequential executor follows.
    """
    out: list = []
    for p in nodes:
        if id(p) in source:
            out.append(p)
            continue
        needs = set(p.input)
        pos = max((k for k, q in enumerate(out) if needs.intersection(q.output)), default=-1)
        out.insert(pos + 1, p)
    return out


@dataclass(frozen=True)
class Block:
    """A value of the original model that the fused model computes with new nodes: the
    output of the folded node ``label``, tensor ``original`` there, ``fused`` here;
    ``inner``: the original's tensors it was computed from that the fused model no longer
    has, and those it reads (whose magnitudes set how finely float32 can round it)."""

    label: str
    original: str
    fused: str
    inner: tuple = ()


def _blocks(lifted: Lifted, value: dict, emitted: set) -> list[Block]:
    """One :class:`Block` per new node whose value replaces an original node's;
    ``emitted``: indices of the original nodes the fused model keeps."""
    graph, g = lifted.graph, lifted.model.graph
    producer = {o: k for k, n in enumerate(g.node) for o in n.output if o}
    found: dict[Node, Block] = {}
    for old in graph.replaced:
        new = graph.now(old)
        if not isinstance(old.origin, NodeOrigin) or new.origin is not None or not new.alive \
                or new not in value or new in found:
            continue
        out = g.node[old.origin.index].output[0]
        found[new] = Block(old.name, out, value[new], _region(g, producer, out, emitted))
    return list(found.values())


def _region(g, producer: dict, name: str, emitted: set) -> tuple:
    """Tensors ``name`` is computed from, back to (and including) those the fused model
    still has: the computed ones, not initializers or constants."""
    inputs = {x.name for x in g.input}
    seen, stack = set(), [name]
    while stack:
        k = producer.get(stack.pop())
        if k is None or k in emitted:
            continue
        for i in g.node[k].input:
            computed = i in inputs or (i in producer and g.node[producer[i]].op_type != "Constant")
            if computed and i not in seen:
                seen.add(i)
                stack.append(i)
    return tuple(sorted(seen))


def _wanted_names(graph, sink) -> dict:
    """The original tensor name each new node's value must have: the graph output, or the
    name a subgraph reads, that it now computes (the first such; others are copies)."""
    wanted: dict[Node, str] = {}
    for name, src in zip(sink.origin.names, sink.inputs):
        if src.origin is None:
            wanted.setdefault(src, name)
    for n in graph.nodes:
        if isinstance(n.origin, NodeOrigin):
            for slot, src in zip(n.origin.slots, n.inputs):
                if isinstance(slot, str) and src.origin is None:
                    wanted.setdefault(src, slot)
    return wanted


def _take_name(n, wanted, value, fresh) -> None:
    """Rename the new value of ``n`` (which nothing reads yet) to its wanted name, if any."""
    name = wanted.get(n)
    if name is not None:
        producer = fresh.pop(value[n])
        producer.output[0] = name
        fresh[name] = producer
        value[n] = name


def _is_noop(p) -> bool:
    """An Identity, or an inference Dropout (no mask read, no training_mode input)."""
    if p.domain not in ("", "ai.onnx") or not p.input or not p.output[0]:
        return False
    if p.op_type == "Identity":
        return True
    return p.op_type == "Dropout" and not any(p.output[1:]) and not any(p.input[2:])


def _bypass_noops(nodes, outputs) -> list:
    """``nodes`` without their no-ops (:func:`_is_noop`) whose output is no graph output and
    read by no subgraph: their readers read the no-op's input instead."""
    protected = set(outputs)
    for p in nodes:
        protected.update(implicit_inputs(p))
    alias: dict[str, str] = {}
    kept = []
    for p in nodes:
        p.input[:] = [alias.get(i, i) for i in p.input]
        if _is_noop(p) and p.output[0] not in protected:
            alias[p.output[0]] = p.input[0]
        else:
            kept.append(p)
    return kept


def _add_initializer(graph, name: str, array: np.ndarray, held: dict | None) -> onnx.TensorProto:
    """``numpy_helper.from_array(array, name)`` built in ``graph`` itself (a TensorProto
    appended to a graph is copied: a large weight would be in memory twice), or held
    (``held`` given, see :func:`reparam.frontends.onnx_file.hold`); ``array``
    little-endian and contiguous."""
    t = graph.initializer.add()
    t.name = name
    t.dims.extend(array.shape)
    t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    if held is None:
        t.raw_data = array.tobytes()
    else:
        onnx_file.hold(t, array, held)
    return t


def _same_bytes(t: onnx.TensorProto, held: np.ndarray | None, array: np.ndarray) -> bool:
    """The tensor ``t`` written from ``array``'s twin (``held``, when it is held; else its
    raw_data is) has the bytes of ``array`` (contiguous, of its dtype and shape)."""
    if held is None:
        return t.raw_data == array.tobytes()
    return np.array_equal(held.reshape(-1).view(np.uint8), array.reshape(-1).view(np.uint8))


def lower(lifted: Lifted, release: bool = False, blocks: list | None = None,
          held: dict | None = None) -> onnx.ModelProto:
    """The ONNX model computing ``lifted.graph`` (see the module docstring).

    ``release``: drop each new conv's float64 kernel from the IR once its
    initializers are written (the IR cannot be lowered again afterwards).
    ``blocks``, a list, receives a :class:`Block` for each value a rewrite computes anew.
    ``held``, a dict: the model's new initializers, and a light model's weights it keeps,
    are held there instead of in the proto (see :func:`reparam.frontends.onnx_file.hold`),
    for :func:`reparam.frontends.onnx.save` to write.
    """
    model, graph = lifted.model, lifted.graph
    g = model.graph
    taken = {i.name for i in g.input} | {o.name for o in g.output} | {t.name for t in g.initializer}
    taken |= {o for n in g.node for o in n.output} | {n.name for n in g.node if n.name}
    tensors, node_names = _Names(taken), _Names({n.name for n in g.node})
    alive_names = {g.node[n.origin.index].name for n in graph.nodes if isinstance(n.origin, NodeOrigin)}
    node_names.taken = set(alive_names)
    value: dict[Node, str] = {}
    nodes: list[onnx.NodeProto] = []
    source: dict[int, int] = {}  # id of an emitted copy -> index of the node it copies
    inits: list[tuple] = []  # (name, array or (node, field[, shape]), dtype): made in ``out``
    fresh: dict[str, onnx.NodeProto] = {}  # tensor made here -> its producer
    wanted = _wanted_names(graph, lifted.sink)
    copied: set[str] = set()  # names an Identity defines (each once)

    def copy_as(src_name, name, why):
        if name not in copied:
            copied.add(name)
            nodes.append(helper.make_node("Identity", [src_name], [name],
                                          name=node_names.fresh(name + why)))

    for n in graph.nodes:
        o = n.origin
        if isinstance(o, NodeOrigin):
            p = onnx.NodeProto()
            p.CopyFrom(g.node[o.index])
            for slot, src in zip(o.slots, n.inputs):
                if isinstance(slot, int):
                    p.input[slot] = value[src]
                elif value[src] != slot:  # a subgraph reads it by name
                    copy_as(value[src], slot, "/reparam_restore")
            nodes.append(p)
            source[id(p)] = o.index
            if len(p.output) == 1:
                value[n] = p.output[0]
        elif isinstance(o, TensorOrigin):
            value[n] = o.name
        elif isinstance(o, OutputsOrigin):
            pass
        elif n.op == "conv":
            conv: Conv = n.attrs["kernel"]
            dt = np.dtype(n.type.dtype)
            name = node_names.fresh(n.name or "conv")
            w, b = tensors.fresh(name + ".weight"), tensors.fresh(name + ".bias")
            inits.append((w, (n, "weight"), dt))
            inits.append((b, (n, "bias"), dt))
            out = tensors.fresh(name + "_output_0")
            x = value[n.inputs[0]]
            if conv.ndim == 0 and conv.groups > 1:  # per-channel (N, C): x * w + b
                inits[-2] = (w, (n, "weight", (conv.out_channels,)), dt)
                scaled = tensors.fresh(name + "_scaled")
                nodes.append(helper.make_node("Mul", [x, w], [scaled], name=name))
                p = helper.make_node("Add", [scaled, b], [out], name=node_names.fresh(name))
            elif conv.ndim == 0:  # a linear layer
                p = helper.make_node("Gemm", [x, w, b], [out], name=name, transB=1)
            else:
                p = helper.make_node(
                    "Conv", [x, w, b], [out], name=name, dilations=list(conv.dilation),
                    group=conv.groups, kernel_shape=list(conv.kernel_size),
                    pads=[p_[0] for p_ in conv.pads] + [p_[1] for p_ in conv.pads],
                    strides=list(conv.stride))
            nodes.append(p)
            fresh[out] = p
            value[n] = out
            _take_name(n, wanted, value, fresh)
        elif n.op == "conv_transpose":
            ct = n.attrs["kernel"]
            dt = np.dtype(n.type.dtype)
            name = node_names.fresh(n.name or "conv_transpose")
            w, b = tensors.fresh(name + ".weight"), tensors.fresh(name + ".bias")
            inits.append((w, (n, "weight"), dt))
            inits.append((b, (n, "bias"), dt))
            out = tensors.fresh(name + "_output_0")
            p = helper.make_node(
                "ConvTranspose", [value[n.inputs[0]], w, b], [out], name=name,
                dilations=list(ct.dilation), group=ct.groups, kernel_shape=list(ct.weight.shape[2:]),
                pads=[q[0] for q in ct.pads] + [q[1] for q in ct.pads], strides=list(ct.stride),
                output_padding=list(ct.output_padding))
            nodes.append(p)
            fresh[out] = p
            value[n] = out
            _take_name(n, wanted, value, fresh)
        elif n.op == "add":  # sum(c_i * x_i): Add / Sub, Neg or Mul by a constant otherwise
            base = node_names.fresh(n.name or "add")
            dt = np.dtype(n.type.dtype)

            names = iter([base])  # the first node takes the Add's name, later ones fresh ones

            def emit(op, ins):
                name = next(names, None) or node_names.fresh(base)
                out = tensors.fresh(name + "_output_0")
                p = helper.make_node(op, ins, [out], name=name)
                nodes.append(p)
                fresh[out] = p
                return out

            def scaled(v, c):
                if c == 1:
                    return v
                if c == -1:
                    return emit("Neg", [v])
                k = tensors.fresh(base + ".coeff")
                inits.append((k, np.array(c), dt))
                return emit("Mul", [v, k])

            coeffs = n.attrs.get("coeffs") or (1.0,) * len(n.inputs)
            if len(n.inputs) > 2 and all(c == 1 for c in coeffs):  # one node, as a Sum was
                value[n] = emit("Sum", [value[i] for i in n.inputs])
            else:
                acc = scaled(value[n.inputs[0]], coeffs[0])
                for c, i in zip(coeffs[1:], n.inputs[1:]):
                    acc = emit("Sub", [acc, value[i]]) if c == -1 else \
                        emit("Add", [acc, scaled(value[i], c)])
                value[n] = acc
            _take_name(n, wanted, value, fresh)
        else:
            raise NotImplementedError(f"the ONNX frontend cannot lower new node {n}")

    # graph outputs keep their names (a new node already computes its own under it)
    for name, src in zip(lifted.sink.origin.names, lifted.sink.inputs):
        if value[src] != name:
            copy_as(value[src], name, "/reparam_output")

    nodes = _early(nodes, source)
    # drop what only folded nodes needed; keep whatever was already unused in the input
    outputs = [o.name for o in g.output]
    live_before = _live(list(g.node), outputs)
    live_after = _live(nodes, outputs)
    kept = [p for p, ok in zip(nodes, live_after)
            if ok or (id(p) in source and not live_before[source[id(p)]])]
    kept = _bypass_noops(kept, outputs)
    if blocks is not None:
        blocks.extend(_blocks(lifted, value, {source[id(p)] for p in kept if id(p) in source}))
    used_before = _used_names(list(g.node), outputs)
    used_after = _used_names(kept, outputs)

    out = onnx.ModelProto()
    copy_fields(model, out, skip=("graph",))
    copy_fields(g, out.graph, skip=("node", "initializer", "value_info"))
    out.graph.node.extend(kept)
    listed = {i.name for i in g.input}  # an initializer listed as graph input stays with it
    for t in g.initializer:
        if t.name in used_after or t.name not in used_before or t.name in listed:
            if onnx_file.is_lazy(t):  # a light model's weight: written back in full
                if held is None:
                    onnx_file.materialize(t, out.graph.initializer.add())
                else:
                    onnx_file.hold_lazy(t, out.graph.initializer.add(), held)
            else:
                out.graph.initializer.append(t)
    # equal new tensors are written once: (dtype, shape, crc32) -> the tensors written with
    # it (a checksum match is confirmed byte for byte)
    made: dict[tuple, list[tuple]] = {}  # ... as (TensorProto, its array when held)
    same: dict[str, str] = {}
    for k, (name, src, dt) in enumerate(inits):
        inits[k] = None
        array = getattr(src[0].attrs["kernel"], src[1]) if isinstance(src, tuple) else src
        if isinstance(src, tuple) and len(src) > 2:
            array = array.reshape(src[2])
        if name in used_after:
            array = np.asarray(array, dtype=np.dtype(dt).newbyteorder("<"), order="C")
            written = made.setdefault((array.dtype.str, array.shape, zlib.crc32(array.data)), [])
            twin = next((t for t, a in written if _same_bytes(t, a, array)), None)
            if twin is not None:
                same[name] = twin.name
            else:
                t = _add_initializer(out.graph, name, array, held)
                written.append((t, array if held is not None else None))  # (held anyway)
        del array
        if release and isinstance(src, tuple) and src[1] == "bias":  # its weight is written too
            src[0].attrs.pop("kernel")
    if same:
        for p in out.graph.node:
            p.input[:] = [same.get(i, i) for i in p.input]
    present = {o for p in kept for o in p.output} | used_after
    out.graph.value_info.extend(vi for vi in g.value_info if vi.name in present)
    inferred = infer_value_info(out)
    if inferred is not None:
        del out.graph.value_info[:]
        out.graph.value_info.extend(inferred)
    return out
