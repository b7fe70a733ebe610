"""Types for the torch.fx frontend: shape propagation without data.

:func:`propagate` runs a traced graph node by node on the meta device (or,
where that cannot run, on fake tensors: shapes, dtypes and devices, no data, no
compute; conv, BatchNorm, activation and elementwise calls are not even run,
their result types follow from torch's size, broadcasting and promotion rules)
and returns the :class:`~reparam.ir.TensorType` of every value, as the IR needs
them. The module's parameters and buffers are swapped for data-less copies
while it runs, so nothing the forward does in place reaches them.

The inputs are the caller's ``example_inputs`` or, without them, inputs the
frontend can justify from the graph (see :func:`justified_inputs`: the layer
that first reads each input fixes its rank and channels) at batch 2 and a
spatial size of 67 (or 224 where the model needs that): a prime, so that sizes
derived from it do not coincide by accident (an operand of size 1 beside one of
another size, which would broadcast, shows up as such). ``propagate`` also
takes several runs: a size that differs between them is dynamic (None) in the
type. A model that cannot be run so gets no types, and nothing that needs a
type is folded (the report says why).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
import torch.nn.functional as F

from ..ir import TensorType
from .fx_effects import has_hooks, known_class
from .fx_traced import Traced

#: module classes whose call fixes the rank of its input (channels: ``in_channels`` or
#: ``num_features``)
_FIXES_RANK = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5, nn.ConvTranspose1d: 3,
               nn.ConvTranspose2d: 4, nn.ConvTranspose3d: 5, nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}
#: module classes and functions that keep the rank and channels of their first input (a
#: scalar operand at most), through which the justification looks for a layer that fixes them
_KEEP_MODULES = frozenset({nn.BatchNorm1d, nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU,
                           nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.ZeroPad1d,
                           nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                           nn.ConstantPad3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                           nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d})
_JUSTIFYING = frozenset(_FIXES_RANK) | _KEEP_MODULES
_KEEP_FUNCTIONS = frozenset({operator.add, operator.sub, operator.mul, operator.truediv,
                             torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.silu,
                             F.gelu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.mish,
                             F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d,
                             F.max_pool2d, F.max_pool3d, F.dropout, F.dropout2d})
#: (batch, spatial size) of the justified run, tried in order (see the module docstring)
_RUNS = (((2, 67),), ((2, 224),), ((1, 224),))


@dataclass
class Types:
    """Per fx node: its type (or None) and the concrete shape of each run."""

    of: dict = field(default_factory=dict)      # fx.Node -> TensorType | None
    shapes: dict = field(default_factory=dict)  # fx.Node -> tuple of torch.Size (one per run)
    note: str = ""                              # why there are no types, if there are none

    def get(self, node) -> TensorType | None:
        return self.of.get(node) if isinstance(node, fx.Node) else None

    def same_shape(self, a: fx.Node, b: fx.Node) -> bool:
        """Whether ``a`` and ``b`` had one shape in every run (no broadcasting)."""
        sa, sb = self.shapes.get(a), self.shapes.get(b)
        return sa is not None and sa == sb


@functools.lru_cache(maxsize=None)
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).rpartition(".")[2]


def _type_of(values, device: str | None) -> TensorType | None:
    """The type of a node's results over the runs (None unless all are plain tensors);
    ``device``: the device of every value, where the runs were on the meta device."""
    first = values[0]
    if len(values) == 1:  # the common case, in short
        if not isinstance(first, torch.Tensor):
            return None
        return TensorType(dtype_name(first.dtype), tuple(map(int, first.shape)),
                          device or str(first.device))
    if not all(isinstance(v, torch.Tensor) for v in values):
        return None
    if any(v.dtype != first.dtype or v.dim() != first.dim() for v in values):
        return None
    shape = tuple(int(d) if all(int(v.shape[k]) == int(d) for v in values) else None
                  for k, d in enumerate(first.shape))
    return TensorType(dtype_name(first.dtype), shape, device or str(first.device))


@contextlib.contextmanager
def _swapped_state(modules, convert):
    """Every parameter and buffer of ``modules`` replaced by ``convert(tensor)`` for the
    duration."""
    saved = []
    try:
        for m in modules:
            for table in (m._parameters, m._buffers):
                for name, t in table.items():
                    if t is not None:
                        saved.append((table, name, t))
                        table[name] = convert(t)
        yield
    finally:
        for table, name, t in saved:
            table[name] = t


def _conv_output(m: nn.Module, x: torch.Tensor):
    """The (empty) output of conv module ``m`` on a batch ``x``, by torch's size formula;
    None where the module itself should say (anything unusual)."""
    nd = len(m.kernel_size)
    if x.dim() != nd + 2 or x.shape[1] != m.in_channels or m.weight.dtype != x.dtype:
        return None
    sizes = []
    for k, length in enumerate(x.shape[2:]):
        if m.padding == "same":
            sizes.append(length)
            continue
        pad = 0 if m.padding == "valid" else m.padding[k]
        out = (length + 2 * pad - m.dilation[k] * (m.kernel_size[k] - 1) - 1) // m.stride[k] + 1
        if out < 1:
            return None
        sizes.append(out)
    return x.new_empty((x.shape[0], m.out_channels, *sizes))


#: module classes whose output is a new tensor of their input's type (in eval mode, for
#: BatchNorm), and conv classes, whose output type a formula gives: neither needs running
_SAME_TYPE = frozenset({nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                        nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
                        nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Mish, nn.ELU})
_CONVS = frozenset({nn.Conv1d, nn.Conv2d, nn.Conv3d})
_RULED = _SAME_TYPE | _CONVS


#: elementwise functions of one tensor whose result has its type (other arguments are numbers
#: or flags), for a floating-point tensor
_UNARY = frozenset({torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.gelu, F.silu,
                    F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.mish, F.leaky_relu, F.elu})
#: elementwise arithmetic of two operands, without keywords: broadcast shape, promoted dtype
_BINARY = frozenset({operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                     torch.sub, torch.mul, torch.div})


def _elementwise_output(target, args, kwargs):
    """The (empty) result of an elementwise call by torch's broadcasting and promotion rules;
    None where the call itself should say."""
    if target in _UNARY:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not any(
                isinstance(a, torch.Tensor) for a in list(args[1:]) + list(kwargs.values())):
            return x.new_empty(x.shape)
        return None
    if target is F.batch_norm:  # in eval: a new tensor of its input's type
        x = args[0] if args else None
        training = args[5] if len(args) > 5 else kwargs.get("training", False)
        if isinstance(x, torch.Tensor) and x.is_floating_point() and training is False:
            return x.new_empty(x.shape)
        return None
    if target not in _BINARY or kwargs or len(args) != 2:
        return None
    a, b = args
    tensors = [v for v in (a, b) if isinstance(v, torch.Tensor)]
    if not tensors or any(not isinstance(v, (torch.Tensor, int, float)) or isinstance(v, bool)
                          for v in (a, b)):
        return None
    dtype = torch.result_type(a, b)
    if not dtype.is_floating_point or any(t.device != tensors[0].device for t in tensors):
        return None
    shapes = [t.shape for t in tensors]
    if shapes[-1] != shapes[0]:  # (one shape broadcasts to itself)
        try:
            shapes[0] = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            return None
    return tensors[0].new_empty(shapes[0], dtype=dtype)


class _Recorder(fx.Interpreter):
    def __init__(self, traced: Traced, convert):
        super().__init__(traced.root, garbage_collect_values=False, graph=traced.graph)
        self.traced, self.convert = traced, convert
        self.converted: dict = {}

    def run_node(self, n):
        """As fx's, without its per-node traceback context (a fifth of the run's time)."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        return getattr(self, n.op)(n.target, args, kwargs)

    def call_module(self, target, args, kwargs):
        m = self.traced.fetch(target)
        x = args[0] if len(args) == 1 and not kwargs else None
        cls = known_class(type(m), _RULED)
        if isinstance(x, torch.Tensor) and cls is not None and not has_hooks(m) \
                and "forward" not in m.__dict__:
            if cls in _CONVS:
                out = _conv_output(m, x)
                if out is not None:
                    return out
            elif x.dim() >= 2 and x.is_floating_point() and not getattr(m, "training", False):
                return x.new_empty(x.shape)
        return m(*args, **kwargs)  # as fx's call_module, without fetching the module again

    def call_function(self, target, args, kwargs):
        out = _elementwise_output(target, args, kwargs)
        return out if out is not None else super().call_function(target, args, kwargs)

    def get_attr(self, target, args, kwargs):
        value = self.traced.fetch(target)  # the stored tensor, of which convert makes the copy
        if isinstance(value, torch.Tensor) and target not in self.converted:
            self.converted[target] = self.convert(value)
        return self.converted.get(target, value)


@dataclass(frozen=True)
class _Spec:
    """An input to make: shape, dtype, device."""

    shape: tuple
    dtype: torch.dtype
    device: torch.device


def _devices(traced: Traced, inputs) -> set:
    found = {str(d) for d in {t.device for t in traced.tensors()}}
    return found | {str(x.device) for x in inputs if isinstance(x, (torch.Tensor, _Spec))}


def _run(traced: Traced, inputs, on_meta: bool, cache: dict) -> dict:
    """Each node's result without data (per placeholder input: a tensor, whose shape, dtype
    and device are used, a :class:`_Spec`, or another value passed as it is): on the meta
    device (cheapest), or on fake tensors, which also model devices and what meta tensors
    cannot run (tensors made inside the forward, for instance). ``cache``: meta copies of
    stored tensors by id, shared by the runs."""
    if on_meta:
        def convert(t):
            if id(t) not in cache:
                cache[id(t)] = (t, torch.empty_like(t, device="meta"))  # t: keeps its id unique
            return cache[id(t)][1]

        def make(x):
            return torch.empty(x.shape, dtype=x.dtype, device="meta")
        mode = contextlib.nullcontext()
    else:
        from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)

        def convert(t):
            return t if isinstance(t, FakeTensor) else mode.from_tensor(t)

        def make(x):
            with mode:
                return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    args = [make(x) if isinstance(x, _Spec) else convert(x) if isinstance(x, torch.Tensor) else x
            for x in inputs]
    rec = _Recorder(traced, convert)
    with _swapped_state(traced.modules(), convert), mode, torch.no_grad(), _quiet():
        rec.run(*args)
    return rec.env


def _run_all(traced: Traced, runs) -> tuple[list, str | None]:
    """The environments of ``runs`` and the one device of every value if the meta device
    ran them (None if fake tensors did)."""
    devices = set().union(*(_devices(traced, r) for r in runs))
    if len(devices) == 1:
        try:
            cache: dict = {}
            return [_run(traced, r, True, cache) for r in runs], devices.pop()
        except Exception:  # e.g. a tensor made on the CPU inside the forward: try fake ones
            pass
    return [_run(traced, r, False, {}) for r in runs], None


@contextlib.contextmanager
def _quiet():
    """Fake-tensor mode logs every op that fails; a failed run is an answer here, not news."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


#: convolution functions and the input rank they fix
_CONV_FUNCTION_RANK = {torch.conv1d: 3, torch.conv2d: 4, torch.conv3d: 5}


def _functional_conv_spec(traced: Traced, node: fx.Node):
    """``(rank, channels, dtype, device)`` of the input of ``F.conv*d(x, weight, ...)`` with a
    stored weight and plain groups (a conv module traced as a root is one); else None."""
    rank = _CONV_FUNCTION_RANK.get(node.target)
    if rank is None:
        return None
    w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    if not isinstance(w, fx.Node) or w.op != "get_attr" or type(groups) is not int:
        return None
    weight = traced.fetch(w.target)
    if not isinstance(weight, torch.Tensor) or weight.dim() != rank:
        return None
    return rank, weight.shape[1] * groups, weight.dtype, weight.device


def justified_inputs(traced: Traced) -> list | str:
    """Per placeholder, ``(rank, channels, dtype, device)`` read off the first layer that
    fixes its shape, or a string saying which input could not be justified."""
    found = []
    for p in (n for n in traced.graph.nodes if n.op == "placeholder"):
        if p.args:  # a default (e.g. a concrete argument): run with it
            found.append(("default", p.args[0]))
            continue
        if not p.users:
            found.append(None)
            continue
        frontier, seen, spec = [p], set(), None
        while frontier and spec is None:
            n = frontier.pop(0)
            for u in n.users:
                if u in seen:
                    continue
                seen.add(u)
                m = traced.fetch(u.target) if u.op == "call_module" else None
                if not u.args or u.args[0] is not n:
                    continue
                cls = known_class(type(m), _JUSTIFYING) if m is not None else None
                conv = _functional_conv_spec(traced, u) if u.op == "call_function" else None
                if conv is not None:
                    spec = conv
                    break
                if cls in _FIXES_RANK:
                    w = next(t for t in (getattr(m, "weight", None), m.running_mean
                                         if hasattr(m, "running_mean") else None) if t is not None)
                    channels = m.in_channels if hasattr(m, "in_channels") else m.num_features
                    spec = (_FIXES_RANK[cls], channels, w.dtype, w.device)
                    break
                keeps = cls in _KEEP_MODULES if m is not None else (
                    u.op == "call_function" and u.target in _KEEP_FUNCTIONS
                    and all(not isinstance(a, fx.Node) for a in u.args[1:]))
                if keeps:
                    frontier.append(u)
        if spec is None:
            return (f"the shape of input {p.name!r} cannot be read off the model (no "
                    "convolution or BatchNorm2d/3d reads it first)")
        found.append(spec)
    return found


def capture_inputs(model: nn.Module, example_inputs) -> dict:
    """The inputs (tensors as :class:`_Spec`) each submodule of ``model`` is called with when
    ``model`` runs on fake ``example_inputs`` (its first two calls), by module path; empty if the model
    does not run on fake tensors (e.g. control flow on tensor values)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls: dict = {}
    paths = {id(m): p for p, m in model.named_modules() if p}

    def record(m, args):
        seen = calls.setdefault(paths[id(m)], [])
        if len(seen) < 2:
            seen.append([_Spec(tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor)
                         else a for a in args])

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    handles = [m.register_forward_pre_hook(record) for p, m in model.named_modules() if p]
    try:
        fake = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
        with _swapped_state(model.modules(), mode.from_tensor), mode, torch.no_grad(), _quiet():
            model(*fake)
    except Exception:
        return {}
    finally:
        for h in handles:
            h.remove()
    return calls


def propagate(traced: Traced, runs=None) -> Types:
    """The types of the values of ``traced`` (see the module docstring). ``runs``: input lists
    to run on (tensors, fake ones included); None: justified inputs."""
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    defaults = [p.args[0] if p.args else None for p in placeholders]
    if runs is not None:
        candidates = [[list(r) + defaults[len(r):] for r in runs]]
    else:
        specs = justified_inputs(traced)
        if isinstance(specs, str):
            return Types(note=f"no types: {specs}; pass example_inputs to reparam.fuse")
        candidates = [[[s if s is None or s[0] == "default" else
                        _Spec((n, s[1]) + (size,) * (s[0] - 2), s[2], s[3]) for s in specs]
                       for n, size in sizes] for sizes in _RUNS]
        candidates = [[[s[1] if isinstance(s, tuple) else s for s in run] for run in c]
                      for c in candidates]
    error = None
    for inputs in candidates:
        try:
            envs, device = _run_all(traced, inputs)
        except Exception as e:  # the model does not run at these sizes: try the next
            error = error or e
            continue
        types = Types()
        for node in traced.graph.nodes:
            values = [env.get(node) for env in envs]
            types.of[node] = _type_of(values, device)
            if types.of[node] is not None:
                types.shapes[node] = tuple(tuple(v.shape) for v in values)
        return types
    what = "example_inputs" if runs is not None else "inputs of the shapes it reads"
    text = str(error).strip().splitlines()
    return Types(note=f"no types: the model did not run on fake {what} "
                      f"({type(error).__name__}: {text[0] if text else ''}); pass example_inputs "
                      "to reparam.fuse")
