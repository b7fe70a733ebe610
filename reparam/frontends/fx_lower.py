"""Lowering for the torch.fx frontend: an eval-mode ``fx.GraphModule`` computing the IR.

Lowering builds a new fx graph: original nodes (those with an fx node as
``origin``) are copied as they were (with inputs remapped), new ``conv`` nodes
become fresh ``nn.ConvNd`` modules named after the module they came from, new
``add`` nodes ``operator.add`` calls.

Every module and attribute the graph uses sits at the top level of the
GraphModule, its dotted path written with underscores
(``features.0.branches.0.conv`` -> ``features_0_branches_0_conv``): the forward
code then reaches each with one attribute lookup, not one ``Module.__getattr__``
call per level (at batch 1 those cost a small network 3-5% of its latency).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from ..ir import Graph, Node
from ..kernel import Conv
from .fx_lift import CONV_NDIM, CONV_TRANSPOSE_NDIM
from .fx_traced import Traced

_CONV_CLASS = {nd: cls for cls, nd in CONV_NDIM.items()}
_CONV_TRANSPOSE_CLASS = {nd: cls for cls, nd in CONV_TRANSPOSE_NDIM.items()}


def conv_module(conv: Conv, dtype: str, device: str | None) -> nn.Module:
    """A ``nn.ConvNd`` computing ``conv`` (symmetric padding; see :func:`lower`), its
    parameters of the dtype named ``dtype`` on ``device``."""
    m = _CONV_CLASS[conv.ndim](  # built on the meta device: no memory, no random init
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
        tuple(b for b, _ in conv.pads), conv.dilation, conv.groups, bias=True, device="meta")
    m.weight = nn.Parameter(_tensor(conv.weight, dtype, device))
    m.bias = nn.Parameter(_tensor(conv.bias, dtype, device))
    return m


_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}


def _tensor(a: np.ndarray, dtype: str, device: str | None) -> torch.Tensor:
    """float64 ``a`` as a tensor of ``dtype`` (rounded by numpy where it can)."""
    if dtype in _NP_DTYPES:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=_NP_DTYPES[dtype]))
    else:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(getattr(torch, dtype))
    return t if device is None or torch.device(device).type == "cpu" else t.to(device)


def _free_name(name: str, taken: set[str]) -> str:
    """``name`` unless ``taken`` has it; then ``name_1``, ``name_2``, ..."""
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def _flat_names(targets) -> dict[str, str]:
    """A top-level name for each dotted ``target``: the path with underscores, made unique."""
    names, taken = {}, set()
    for target in sorted(targets):
        names[target] = _free_name(target.replace(".", "_"), taken)
        taken.add(names[target])
    return names


def _collect_targets(source: Traced, names: dict[str, str]) -> nn.Module:
    """A new module holding the attributes of ``source`` at the dotted paths of ``names``,
    each under its (top-level) name there: the very objects (``source`` is the frontend's
    own copy of the model), so what it shares stays shared. Submodules, parameters and
    buffers keep their kind, as a GraphModule of the trace holds them (see
    :meth:`Traced.held`)."""
    root = nn.Module()
    for target, name in names.items():
        value, kind = source.held(target)
        if kind == "module":
            root.add_module(name, value)
        elif kind in ("buffer", "non-persistent buffer"):
            root.register_buffer(name, value, persistent=kind == "buffer")
        elif kind == "parameter":
            root.register_parameter(name, value)
        else:
            setattr(root, name, value)
    return root


def lower(graph: Graph, source: Traced, class_name: str) -> fx.GraphModule:
    """Build a GraphModule (in eval mode; its submodules keep their own modes) from ``graph``.

    Nodes with an origin are copied from the graph of ``source``, with the modules and
    attributes they use; new nodes get new modules.
    """
    out = fx.Graph()
    value: dict[Node, fx.Node] = {}
    names = _flat_names({n.origin.target for n in graph.nodes
                         if n.origin is not None and n.origin.op in ("call_module", "get_attr")})
    root, taken = _collect_targets(source, names), set(names.values())
    for node in graph.nodes:
        if node.origin is not None:
            remap = dict(zip(node.attrs["fx_inputs"], (value[i] for i in node.inputs)))
            value[node] = out.node_copy(node.origin, lambda n: remap[n])
            if node.origin.op in ("call_module", "get_attr"):
                value[node].target = names[node.origin.target]
        elif node.op == "conv":
            value[node] = _emit_conv(out, node, value[node.inputs[0]], root, taken)
        elif node.op == "group_norm":
            value[node] = _emit_group_norm(out, node, value[node.inputs[0]], root, taken)
        elif node.op == "conv_transpose":
            value[node] = _emit_conv_transpose(out, node, value[node.inputs[0]], root, taken)
        elif node.op == "add":
            value[node] = _emit_sum(out, [value[i] for i in node.inputs],
                                    node.attrs.get("coeffs") or (1.0,) * len(node.inputs))
        else:
            raise NotImplementedError(f"cannot lower new node {node}")
    out.lint()
    gm = fx.GraphModule(root, out, class_name=class_name)
    gm.training = False  # not .eval(): a module the frontend kept in training mode stays so
    return gm


def _emit_sum(out: fx.Graph, values: list, coeffs) -> fx.Node:
    """``sum(c_i * v_i)``, one node per term after the first: ``+`` and ``-`` for coefficients
    1 and -1, ``torch.add(acc, v, alpha=c)`` for others (one op, as the sum a model writes
    with ``alpha`` is); a term of coefficient 1, if any, first (it needs no multiply)."""
    terms = sorted(zip(coeffs, values), key=lambda t: t[0] != 1)  # (stable)
    (c0, acc), rest = terms[0], terms[1:]
    if c0 == -1:
        acc = out.call_function(operator.neg, (acc,))
    elif c0 != 1:
        acc = out.call_function(operator.mul, (acc, float(c0)))
    for c, v in rest:
        if c == 1:
            acc = out.call_function(operator.add, (acc, v))
        elif c == -1:
            acc = out.call_function(operator.sub, (acc, v))
        else:
            acc = out.call_function(torch.add, (acc, v), {"alpha": float(c)})
    return acc


def _emit_conv_transpose(out: fx.Graph, node: Node, x: fx.Node, root: nn.Module,
                         taken: set) -> fx.Node:
    ct = node.attrs["kernel"]
    name = _free_name(node.name.replace(".", "_"), taken)
    taken.add(name)
    dtype, device = node.type.dtype, node.type.device
    m = _CONV_TRANSPOSE_CLASS[ct.ndim](
        ct.in_channels, ct.out_channels, ct.weight.shape[2:], ct.stride,
        tuple(b for b, _ in ct.pads), ct.output_padding, ct.groups, bias=True, dilation=ct.dilation,
        device="meta")
    m.weight = nn.Parameter(_tensor(ct.weight, dtype, device))
    m.bias = nn.Parameter(_tensor(ct.bias, dtype, device))
    root.add_module(name, m)
    return out.call_module(name, (x,))


def _emit_group_norm(out: fx.Graph, node: Node, x: fx.Node, root: nn.Module,
                     taken: set) -> fx.Node:
    a = node.attrs
    name = _free_name(node.name.replace(".", "_"), taken)
    taken.add(name)
    dtype, device = node.type.dtype, node.type.device
    m = nn.GroupNorm(a["groups"], len(a["weight"]), a["eps"], device="meta")
    m.weight = nn.Parameter(_tensor(a["weight"], dtype, device))
    m.bias = nn.Parameter(_tensor(a["bias"], dtype, device))
    root.add_module(name, m)
    return out.call_module(name, (x,))


def _emit_linear(out: fx.Graph, conv: Conv, x: fx.Node, root: nn.Module, name: str, dtype,
                 device) -> fx.Node:
    """A conv without spatial dimensions on ``(N, C)``: ``nn.Linear`` (dense), or
    ``x * weight + bias`` (per-channel; the passes build no other groups)."""
    if conv.groups == 1:
        m = nn.Linear(conv.in_channels, conv.out_channels, device="meta")
        m.weight = nn.Parameter(_tensor(conv.weight, dtype, device))
        m.bias = nn.Parameter(_tensor(conv.bias, dtype, device))
        root.add_module(name, m)
        return out.call_module(name, (x,))
    root.register_parameter(name + "_weight", nn.Parameter(_tensor(conv.weight[:, 0], dtype, device)))
    root.register_parameter(name + "_bias", nn.Parameter(_tensor(conv.bias, dtype, device)))
    scaled = out.call_function(operator.mul, (x, out.get_attr(name + "_weight")))
    return out.call_function(operator.add, (scaled, out.get_attr(name + "_bias")))


def _emit_conv(out: fx.Graph, node: Node, x: fx.Node, root: nn.Module, taken: set) -> fx.Node:
    conv: Conv = node.attrs["kernel"]
    name = _free_name(node.name.replace(".", "_"), taken)
    taken.add(name)
    like, device = node.type.dtype, node.type.device
    if conv.ndim == 0:
        return _emit_linear(out, conv, x, root, name, like, device)
    if any(b != e for b, e in conv.pads):  # asymmetric: explicit pad, then a conv without
        flat = [p for b, e in reversed(conv.pads) for p in (b, e)]
        x = out.call_function(torch.nn.functional.pad, (x, flat))
        conv = conv.replace(pads=((0, 0),) * conv.ndim)
    root.add_module(name, conv_module(conv, like, device))
    return out.call_module(name, (x,))
