"""Lifting for the torch.fx frontend: the IR of a traced ``nn.Module``.

Lifting reads each fx node: ``nn.ConvNd`` calls become ``conv`` nodes (weights
in float64), ``nn.BatchNormNd`` calls ``bn`` nodes (running statistics),
tensor additions ``add``, ``nn.Identity`` ``identity``; every other node is
opaque and keeps its fx node as ``origin`` (see :func:`lift` for zero pads,
average pools and elementwise ops with a constant).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from ..ir import Graph, Node
from .. import kernel
from ..kernel import Conv

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}


def _np(t: torch.Tensor | None, n: int, fill: float) -> np.ndarray:
    if t is None:
        return np.full(n, fill)
    t = t.detach()
    if t.device.type != "cpu" or t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to("cpu", torch.float64)
    return t.numpy().astype(np.float64)  # a copy: never a view of the model's memory


def _conv_pads(m: nn.Module) -> tuple[tuple[int, int], ...]:
    nd = len(m.kernel_size)
    if m.padding == "valid":
        return ((0, 0),) * nd
    if m.padding == "same":  # torch puts the odd extra pad at the end
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in m.padding)


def lift_conv(m: nn.Module) -> dict:
    kernel = Conv(_np(m.weight, 0, 0), _np(m.bias, m.out_channels, 0.0), m.stride,
                  _conv_pads(m), m.dilation, m.groups)
    attrs = {"kernel": kernel, "dtype": m.weight.dtype, "device": m.weight.device}
    if m.padding_mode != "zeros":
        attrs["refuse"] = f"padding_mode={m.padding_mode!r} is not zero padding"
    return attrs


def lift_bn(m: nn.Module, ndim: int) -> dict:
    c = m.num_features
    ref = next((t for t in (m.running_mean, m.weight) if t is not None), None)
    attrs = {"ndim": ndim, "eps": float(m.eps), "weight": _np(m.weight, c, 1.0),
             "bias": _np(m.bias, c, 0.0)}
    if ref is not None:
        attrs.update(dtype=ref.dtype, device=ref.device)
    if m.running_mean is None or m.running_var is None:
        attrs["refuse"] = ("BatchNorm has no running statistics (track_running_stats=False): "
                           "it normalises with batch statistics at inference")
    else:
        attrs["mean"], attrs["var"] = _np(m.running_mean, c, 0), _np(m.running_var, c, 1)
    return attrs


_PAD_NDIM = {nn.ZeroPad1d: 1, nn.ZeroPad2d: 2, nn.ZeroPad3d: 3, nn.ConstantPad1d: 1,
             nn.ConstantPad2d: 2, nn.ConstantPad3d: 3}
_POOL_NDIM = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_PADS, _POOLS = tuple(_PAD_NDIM), tuple(_POOL_NDIM)


def _ndim_of(m: nn.Module, table: dict) -> int:
    """Spatial rank of a pad or pool module, by the torch class it is an instance of."""
    return next(nd for cls, nd in table.items() if isinstance(m, cls))


#: modules and functions whose output has the channels of their (first) input
_SAME_CHANNELS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
                  nn.Sigmoid, nn.Tanh, nn.Mish, nn.ELU, nn.Dropout, nn.Identity,
                  nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d) + _PADS + _POOLS
_SAME_CHANNELS_FN = {"relu", "relu6", "gelu", "silu", "sigmoid", "hardswish", "dropout", "pad",
                     "avg_pool2d", "max_pool2d", "leaky_relu", "tanh"}
_ARITH = {operator.add: "add", torch.add: "add", "add": "add", operator.sub: "sub",
          torch.sub: "sub", "sub": "sub", operator.mul: "mul", torch.mul: "mul", "mul": "mul",
          operator.truediv: "div", torch.div: "div", "div": "div"}


def _pad_pairs(flat, ndim: int):
    """torch's pad list (last dimension first) as per-dimension (begin, end), or None."""
    flat = list(flat)
    if len(flat) != 2 * ndim or min(flat) < 0:
        return None
    pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(ndim)]
    return tuple(reversed(pairs))


def _pending_pad(pads):
    """A zero pad as an identity kernel, once its channel count is known."""
    if pads is None:
        return None
    return lambda c: ("conv", {"kernel": kernel.identity(c, ndim=len(pads)).replace(pads=pads)})


def _pending_pool(m: nn.Module):
    nd = _ndim_of(m, _POOL_NDIM)
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd  # noqa: E731
    if getattr(m, "divisor_override", None):
        return None
    ks, st, pd = tup(m.kernel_size), tup(m.stride or m.kernel_size), tup(m.padding)

    def make(c):
        k = kernel.avgpool(c, ks, st, tuple((p, p) for p in pd), m.count_include_pad, m.ceil_mode)
        return ("conv", {"kernel": k}) if k else ("conv", {"kernel": None, "refuse": k.reason})
    return make


def _constant(node: fx.Node, gm: fx.GraphModule):
    """The value of a get_attr node or a Python number, as float64 numpy; else None."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return np.array(float(node))
    if isinstance(node, fx.Node) and node.op == "get_attr":
        t = _getattr_path(gm, node.target)
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return _np(t, 0, 0)
    return None


def _getattr_path(root, target: str):
    for part in target.split("."):
        root = getattr(root, part)
    return root


def _arith(node: fx.Node, gm: fx.GraphModule):
    """Elementwise + - * / as an IR op: weighted ``add``, or a per-channel affine ``bn``."""
    kind = _ARITH.get(node.target) if node.op in ("call_function", "call_method") else None
    if kind is None or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if isinstance(a, fx.Node) and isinstance(b, fx.Node) and a.op != "get_attr" and b.op != "get_attr":
        if kind in ("add", "sub"):
            return "add", {"coeffs": (1.0, 1.0 if kind == "add" else -1.0)}, [a, b]
        return None
    slot = 0 if isinstance(a, fx.Node) and a.op != "get_attr" else 1
    x, other = (a, b) if slot == 0 else (b, a)
    v = _constant(other, gm)
    if not isinstance(x, fx.Node) or v is None or (kind == "div" and (slot == 1 or np.any(v == 0))):
        return None
    if v.size > 1:  # per-channel: (C,1,..,1) or (1,C,1,..,1) against (N,C,*spatial)
        c = v.size
        if v.ndim < 2 or sum(d != 1 for d in v.shape) != 1 or c not in v.shape[:2]:
            return None
        spatial = v.ndim - 1 if v.shape[0] == c else v.ndim - 2
        if spatial < 1:
            return None
    flat = v.reshape(-1)
    weight, shift = {"add": (1.0, flat), "sub": (1.0, -flat) if slot == 0 else (-1.0, flat),
                     "mul": (flat, 0.0), "div": (1.0 / flat, 0.0)}[kind]

    def make(c, ndim):
        w, sh = (np.broadcast_to(np.asarray(t, dtype=np.float64), (c,)).copy()
                 for t in (weight, shift))
        return "bn", {"mean": np.zeros(c), "var": np.ones(c), "eps": 0.0, "weight": w,
                      "bias": sh, "ndim": ndim}
    ins = [x] + ([other] if isinstance(other, fx.Node) else [])
    if v.size > 1:
        op, attrs = make(c, spatial)
        t = _getattr_path(gm, other.target)  # a per-channel constant is a stored tensor
        return op, {**attrs, "dtype": t.dtype, "device": t.device}, ins
    return "pending", {"make": make}, ins


def _classify(node: fx.Node, gm: fx.GraphModule, modules: dict):
    """IR op, attrs and the fx nodes that are its IR inputs, for one fx node."""
    first = [node.args[0]] if node.args else []
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _CONVS):
            return "conv", lift_conv(m), first
        for cls, nd in _BNS.items():
            if isinstance(m, cls):
                return "bn", lift_bn(m, nd), first
        if isinstance(m, nn.Identity):
            return "identity", {}, first
        make = None
        if isinstance(m, _PADS) and float(getattr(m, "value", 0.0)) == 0.0:
            make = _pending_pad(_pad_pairs(m.padding, _ndim_of(m, _PAD_NDIM)))
        elif isinstance(m, _POOLS):
            make = _pending_pool(m)
        attrs = {"same_channels": isinstance(m, _SAME_CHANNELS), "opaque_op": type(m).__name__}
        if make:
            attrs["make"] = lambda c, nd, make=make: make(c)
            return "pending", attrs, first
        return type(m).__name__, attrs, list(node.all_input_nodes)
    if node.op == "get_attr":
        return "constant", {}, []
    arith = _arith(node, gm)
    if arith is not None:
        return arith
    name = getattr(node.target, "__name__", str(node.target))
    attrs = {"same_channels": name in _SAME_CHANNELS_FN, "opaque_op": name}
    if node.target is torch.nn.functional.pad and len(node.args) >= 2:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        flat = node.args[1]
        if mode == "constant" and not value and isinstance(flat, (list, tuple)) \
                and all(isinstance(p, int) for p in flat):
            make = _pending_pad(_pad_pairs(flat, len(flat) // 2))
            if make:
                attrs["make"] = lambda c, nd, make=make: make(c)
                return "pending", attrs, first
    return (name if node.op in ("call_function", "call_method") else node.op), attrs, \
        list(node.all_input_nodes)


#: IR ops whose output has their (first) input's channels (an nn.Identity is lifted as
#: "identity" and only dropped by a rule, after lifting)
_PASS_CHANNELS = ("add", "pending", "identity")


def _channels_of(node: Node, depth: int = 8):
    """(channels, spatial rank, the conv or BN they were read off) of ``node``'s output,
    from nearby convs and BNs, or None."""
    seen, frontier = set(), [(node, 0)]
    while frontier:
        n, d = frontier.pop(0)
        if id(n) in seen or d > depth:
            continue
        seen.add(id(n))
        k = n.attrs.get("kernel")
        if n.op == "conv" and k is not None:
            return k.out_channels, k.ndim, n
        if n.op == "bn" and n.attrs.get("ndim"):
            return len(n.attrs["weight"]), n.attrs["ndim"], n
        if n is node or n.attrs.get("same_channels") or n.op in _PASS_CHANNELS:
            frontier += [(i, d + 1) for i in n.inputs[:1] if i.op != "constant"]
        for u in n.users:  # a consumer reading this tensor as its (first) input
            if u.inputs and u.inputs[0] is n:
                ku = u.attrs.get("kernel")
                if u.op == "conv" and ku is not None:
                    return ku.in_channels, ku.ndim, u
                if u.op == "bn" and u.attrs.get("ndim"):
                    return len(u.attrs["weight"]), u.attrs["ndim"], u
                if u.attrs.get("same_channels") or u.op in _PASS_CHANNELS:
                    frontier.append((u, d + 1))
    return None


def lift(gm: fx.GraphModule) -> Graph:
    """The IR of ``gm``'s graph; every node keeps its fx node as ``origin``.

    Zero pads, average pools and elementwise ops with a scalar become kernels
    once their channel count is read off a nearby conv or BatchNorm; without
    one they stay opaque.
    """
    modules = dict(gm.named_modules())
    graph = Graph()
    ir_of: dict[fx.Node, Node] = {}
    for node in gm.graph.nodes:
        op, attrs, fx_inputs = _classify(node, gm, modules)
        attrs["fx_inputs"] = fx_inputs
        name = node.target if node.op == "call_module" else node.name
        ir_of[node] = graph.add(op, [ir_of[i] for i in fx_inputs], attrs, name, origin=node)
    for n in graph.nodes:
        if n.op == "pending":
            _resolve(n)
    return graph


def _resolve(node: Node) -> None:
    found = _channels_of(node)
    make = node.attrs.pop("make")
    if found is None:
        node.op = node.attrs.get("opaque_op", "pending")
        return
    channels, ndim, near = found
    op, attrs = make(channels, ndim)
    node.op = op
    node.attrs.update(attrs)
    # a pad, pool or scalar has no parameters of its own: what a rewrite builds from it
    # takes the dtype and device of the layer its channels were read off
    for key in ("dtype", "device"):
        if key not in node.attrs and key in near.attrs:
            node.attrs[key] = near.attrs[key]
