"""torch.fx frontend: lift a traced ``nn.Module`` into the IR and lower it back.

Lifting reads each fx node: ``nn.ConvNd`` calls become ``conv`` nodes (weights
in float64), ``nn.BatchNormNd`` calls ``bn`` nodes (running statistics),
tensor additions ``add``, ``nn.Identity`` ``identity``; every other node is
opaque and keeps its fx node as ``origin``. Lowering builds a new fx graph:
original nodes are copied as they were (with inputs remapped), new ``conv``
nodes become fresh ``nn.ConvNd`` modules named after the module they came
from, new ``add`` nodes ``operator.add`` calls.
"""
from __future__ import annotations

import contextlib
import dataclasses
import copy
import operator
import warnings

import numpy as np
import torch
from torch import fx, nn

from ..ir import Graph, Node
from .. import kernel
from ..kernel import Conv

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
_ADDS = (operator.add, torch.add)


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


def conv_module(conv: Conv, dtype, device) -> nn.Module:
    """A ``nn.ConvNd`` computing ``conv`` (symmetric padding; see :func:`lower`)."""
    m = _CONVS[conv.ndim - 1](  # built on the meta device: no memory, no random init
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
        tuple(b for b, _ in conv.pads), conv.dilation, conv.groups, bias=True, device="meta")
    m.weight = nn.Parameter(_tensor(conv.weight, dtype, device))
    m.bias = nn.Parameter(_tensor(conv.bias, dtype, device))
    return m


def _tensor(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    """float64 ``a`` as a tensor of ``dtype`` (rounded by numpy where it can)."""
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}
    if dtype in np_dtype:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np_dtype[dtype]))
    else:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
    return t if device is None or torch.device(device).type == "cpu" else t.to(device)


def _parent(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    """The module that holds ``target`` (created empty along the way) and the leaf name."""
    *path, leaf = target.split(".")
    for p in path:
        if not hasattr(root, p):
            root.add_module(p, nn.Module())
        root = getattr(root, p)
    return root, leaf


def _free_name(name: str, taken: set[str]) -> str:
    """``name`` unless a surviving module uses it (or nests under it); then ``name_1``, ..."""
    def clash(n):
        return n in taken or any(t.startswith(n + ".") or n.startswith(t + ".") for t in taken)
    candidate, i = name, 0
    while clash(candidate):
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def _copy_targets(source: nn.Module, targets: set[str]) -> nn.Module:
    """A new module holding deep copies of ``source``'s attributes at ``targets``.

    One memo serves all copies, so what ``source`` shares stays shared.
    Submodules, parameters and buffers keep their kind.
    """
    root, memo = nn.Module(), {}
    for target in sorted(targets):
        owner, leaf = _parent(source, target)
        value = copy.deepcopy(getattr(owner, leaf), memo)
        parent, _ = _parent(root, target)
        if isinstance(value, nn.Module):
            parent.add_module(leaf, value)
        elif leaf in owner._buffers:
            persistent = leaf not in owner._non_persistent_buffers_set
            parent.register_buffer(leaf, value, persistent=persistent)
        else:
            setattr(parent, leaf, value)
    return root


def lower(graph: Graph, source: nn.Module, class_name: str) -> fx.GraphModule:
    """Build an eval-mode GraphModule from ``graph``.

    Nodes with an origin are copied from ``source``'s graph, with copies of the
    modules and attributes they use; new nodes get new modules.
    """
    out = fx.Graph()
    value: dict[Node, fx.Node] = {}
    taken = {n.origin.target for n in graph.nodes
             if n.origin is not None and n.origin.op in ("call_module", "get_attr")}
    root = _copy_targets(source, taken)
    for node in graph.nodes:
        if node.origin is not None:
            remap = dict(zip(node.attrs["fx_inputs"], (value[i] for i in node.inputs)))
            value[node] = out.node_copy(node.origin, lambda n: remap[n])
        elif node.op == "conv":
            value[node] = _emit_conv(out, node, value[node.inputs[0]], root, taken)
        elif node.op == "add":  # sum(c_i * x_i): + and - for coefficients 1 and -1
            coeffs = node.attrs.get("coeffs") or (1.0,) * len(node.inputs)

            def scaled(v, c):
                if c == 1:
                    return v
                return out.call_function(operator.neg, (v,)) if c == -1 else \
                    out.call_function(operator.mul, (v, float(c)))

            acc = scaled(value[node.inputs[0]], coeffs[0])
            for c, i in zip(coeffs[1:], node.inputs[1:]):
                acc = out.call_function(operator.sub, (acc, value[i])) if c == -1 else \
                    out.call_function(operator.add, (acc, scaled(value[i], c)))
            value[node] = acc
        else:
            raise NotImplementedError(f"cannot lower new node {node}")
    out.lint()
    gm = fx.GraphModule(root, out, class_name=class_name)
    return gm.eval()


def _emit_conv(out: fx.Graph, node: Node, x: fx.Node, root: nn.Module, taken: set) -> fx.Node:
    conv: Conv = node.attrs["kernel"]
    name = _free_name(node.name, taken)
    taken.add(name)
    like = node.attrs.get("dtype") or torch.float32
    device = node.attrs.get("device")
    if any(b != e for b, e in conv.pads):  # asymmetric: explicit pad, then a conv without
        flat = [p for b, e in reversed(conv.pads) for p in (b, e)]
        x = out.call_function(torch.nn.functional.pad, (x, flat))
        conv = conv.replace(pads=((0, 0),) * conv.ndim)
    parent, leaf = _parent(root, name)
    parent.add_module(leaf, conv_module(conv, like, device))
    return out.call_module(name, (x,))


# --- the whole torch path -------------------------------------------------------

#: default verification tolerance, relative to max|reference|, per dtype
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for the duration, then restore every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


class _Tracer(fx.Tracer):
    """symbolic tracing that also keeps the caller's ``leaf_modules`` (instances or classes) opaque."""

    def __init__(self, leaf_modules=()):
        super().__init__()
        self.leaf_ids = {id(m) for m in leaf_modules if isinstance(m, nn.Module)}
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (id(m) in self.leaf_ids or isinstance(m, self.leaf_types)
                or super().is_leaf_module(m, qualname))


def trace(model: nn.Module, leaf_modules=(), concrete_args=None) -> fx.GraphModule:
    """The fx graph of ``model``; a GraphModule is used as it is (re-tracing would rename nodes)."""
    if isinstance(model, fx.GraphModule) and not leaf_modules and concrete_args is None:
        return model
    tracer = _Tracer(leaf_modules)
    graph = tracer.trace(model, concrete_args)
    return _graph_module(tracer.root, graph, type(model).__name__)


def _graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule of ``graph``, only read (never run): its Python code is generated lazily,
    on first use, where torch can (compiling it is a tenth of the time of ``fuse``)."""
    try:
        from torch.fx._lazy_graph_module import _LazyGraphModule, _make_graph_module

        return _make_graph_module(root, graph, name, graph_module_cls=_LazyGraphModule)
    except (ImportError, TypeError):  # torch < 2.3, or a changed private API
        return fx.GraphModule(root, graph, name)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def fuse_module(model: nn.Module, rules, example_inputs=None, rtol: float | None = None,
                leaf_modules=(), concrete_args=None):
    """Trace ``model`` (in eval mode), rewrite it with ``rules``; returns ``(module, Report)``.

    The module is a GraphModule when the whole model traces; otherwise a copy of
    ``model`` whose largest traceable submodules are replaced by their fused
    GraphModules (see :func:`fuse_parts`). ``model`` itself is left as it was.
    """
    from ..errors import TraceError
    from ..rewrite import run

    notes = []
    if model.training:
        msg = ("model is in training mode: folding uses BatchNorm running statistics "
               "(inference semantics); the fused model is returned in eval mode")
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append("note: " + msg)
    with eval_mode(model):
        try:
            traced = trace(model, leaf_modules, concrete_args)
        except Exception as e:  # the tracer raises many kinds; fall back to the parts
            fused, report = fuse_parts(model, rules, leaf_modules)
            if not report.before:
                raise TraceError(f"torch.fx could not trace {type(model).__name__} nor any of "
                                 f"its submodules: {_first_line(e)}") from e
            report.notes.insert(0, f"skipped <model> ({type(model).__name__}): {_first_line(e)}")
        else:
            graph = lift(traced)
            report = run(graph, rules)
            fused = lower(graph, traced, type(model).__name__)
        report.notes.extend(notes)
        for r in report.refused:
            if r.warn:
                warnings.warn(f"{r.node}: {r.reason}; left unfolded", UserWarning, stacklevel=3)
        if example_inputs is not None:
            verify(model, fused, example_inputs, rtol)
    return fused, report


def fuse_parts(model: nn.Module, rules, leaf_modules=()):
    """Fuse the largest traceable submodules of a copy of ``model``; leave the rest as it is.

    Children are tried in order; one that does not trace is descended into.
    A part replaced by its GraphModule only where some rule fired. The report
    sums the parts' counts, prefixes node names with the part's path and
    notes every skipped module with the tracer's error.
    """
    from ..rewrite import Report, run

    result, report = copy.deepcopy(model), Report()

    def visit(module: nn.Module, prefix: str):
        for name, child in list(module.named_children()):
            path = prefix + name
            try:
                traced = trace(child, leaf_modules)
            except Exception as e:
                report.notes.append(f"skipped {path} ({type(child).__name__}): {_first_line(e)}")
                visit(child, path + ".")
                continue
            graph = lift(traced)
            part = run(graph, rules)
            report.fired.update(part.fired)
            report.before.update(part.before)
            report.after.update(part.after)
            report.seconds += part.seconds
            report.refused += [dataclasses.replace(r, node=f"{path}.{r.node}") for r in part.refused]
            if part.fired:
                setattr(module, name, lower(graph, traced, type(child).__name__))

    visit(result, "")
    return result, report


def verify(reference: nn.Module, fused: nn.Module, example_inputs, rtol: float | None = None):
    """Raise VerificationError unless ``fused`` matches ``reference`` on ``example_inputs``.

    Each output must satisfy ``max|fused - ref| <= rtol * max|ref|`` (``rtol``
    defaults to :data:`RTOL` for the output's dtype). Returns the worst ratio.
    """
    from torch.utils._pytree import tree_flatten

    from ..errors import VerificationError

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad():
        ref, _ = tree_flatten(reference.eval()(*args))
        got, _ = tree_flatten(fused.eval()(*args))
    if len(ref) != len(got):
        raise VerificationError(f"fused model returns {len(got)} outputs, original {len(ref)}")
    worst = 0.0
    for i, (r, g) in enumerate(zip(ref, got)):
        if not isinstance(r, torch.Tensor):
            continue
        if r.shape != g.shape:
            raise VerificationError(f"output {i}: shape {tuple(g.shape)} != {tuple(r.shape)}")
        tol = rtol if rtol is not None else RTOL.get(r.dtype, 1e-4)
        scale = r.abs().max().item() if r.numel() else 0.0
        diff = (g.double() - r.double()).abs().max().item() if r.numel() else 0.0
        ratio = diff / scale if scale else diff
        if not ratio <= tol:  # also catches NaN
            raise VerificationError(f"output {i}: max|diff| = {diff:.3g} is {ratio:.3g} of "
                                    f"max|ref| = {scale:.3g}, above the tolerance {tol:g}")
        worst = max(worst, ratio)
    return worst
