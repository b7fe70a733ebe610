"""Lifting for the torch.fx frontend: the typed IR of a traced ``nn.Module``.

Every fx node becomes one IR node with the :class:`~reparam.ir.TensorType` of
its value (from :mod:`reparam.frontends.fx_types`). A node is lifted into an op
the passes understand only when its callable is the exact torch function,
Tensor method or module class below and every argument is one the lifter
checks:

=========================================  ============================================
fx node                                    IR
=========================================  ============================================
``nn.Conv1d/2d/3d`` module                 ``conv`` (input ``(N, C, *spatial)``)
``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm`` ``bn`` (eval mode: running statistics)
module
``nn.Identity`` module                     ``identity``
``nn.Dropout*``, ``F.dropout*`` (eval,      ``identity`` (inference: the input itself)
not in place)
``nn.ZeroPad*d``, ``nn.ConstantPad*d``     ``conv``: an identity kernel with the padding
(value 0), ``F.pad`` (constant 0)
``nn.AvgPool1d/2d/3d`` module              ``conv``: :func:`reparam.kernel.avgpool`
``a + b``, ``a - b``, ``torch.add/sub``,    ``add`` (weighted sum, ``alpha`` a coefficient)
``Tensor.add/sub`` (``alpha=``) of two     when ``a``, ``b`` and the result have one type
computed tensors
``x (+ - * /) c``, ``torch.add/sub/mul/``   ``bn`` (per-channel affine ``y = a*x + b``)
``div``, Tensor methods, with ``c`` a      when the result has ``x``'s type (no dtype
number or a stored per-channel tensor      promotion, no broadcasting of ``x``)
``get_attr``                               ``constant``
=========================================  ============================================

A module is lifted only when it is of exactly that class (a subclass may
compute anything), has no hooks and no parametrizations, its ``forward`` is
the class's, its parameters are real floating point (not complex, not
quantized) and nothing in the graph changes them in place, and a BatchNorm is
in eval mode. Everything else is opaque and kept as it was; an opaque
conv-like or BatchNorm-like layer carries attr ``why`` (a
:class:`~reparam.kernel.Refusal`) that the report lists. Side effects
(:mod:`reparam.frontends.fx_effects`) go into the IR as alias classes and
mutation records.
"""
from __future__ import annotations

import inspect
import operator
from inspect import Parameter

import numpy as np
import torch
from torch import fx, nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .. import kernel
from ..ir import OPAQUE, Graph, Node
from ..kernel import Conv, Refusal
from .fx_effects import Effects, bind_arguments, has_hooks, known_class
from .fx_effects import signature as _signature
from .fx_traced import Traced
from .fx_types import Types, dtype_name

CONV_NDIM = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
CONV_TRANSPOSE_NDIM = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
#: BatchNorm classes and the input ranks their forward accepts (None: any rank >= 2)
_BN_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,),
             nn.SyncBatchNorm: None}
_PAD_NDIM = {nn.ZeroPad1d: 1, nn.ZeroPad2d: 2, nn.ZeroPad3d: 3, nn.ConstantPad1d: 1,
             nn.ConstantPad2d: 2, nn.ConstantPad3d: 3}
_POOL_NDIM = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
#: dropout layers: the identity in eval mode
_DROPOUTS = frozenset({nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                       nn.FeatureAlphaDropout})
#: functional forms of conv-like and BatchNorm-like layers, reported when left opaque
_FUNCTIONAL_LAYERS = (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
                      F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.batch_norm,
                      torch.batch_norm)


_KNOWN = frozenset(CONV_NDIM) | frozenset(_BN_RANKS) | frozenset(_PAD_NDIM) \
    | frozenset(_POOL_NDIM) | frozenset(CONV_TRANSPOSE_NDIM) | _DROPOUTS \
    | {nn.Identity, nn.Linear, nn.GroupNorm}
_CONV_FUNCTIONS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}  # F.conv2d is torch.conv2d
_POOL_FUNCTIONS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
#: metadata of a tensor: what reading it depends on (see ``meta`` in :mod:`reparam.ir`)
_RANK_ATTRS = frozenset({"ndim", "dtype", "device", "is_cuda", "layout", "is_quantized"})
#: pure functions and Tensor methods that the lifter evaluates when all their tensor operands
#: are constants (a layer scale ``gamma.view(1, -1, 1, 1)``, ``1 / std``, ...)
_CONSTANT_FUNCTIONS = frozenset({operator.add, operator.sub, operator.mul, operator.truediv,
                                 operator.neg, torch.reshape, torch.flatten, torch.unsqueeze,
                                 torch.squeeze, torch.sqrt, torch.rsqrt, torch.exp, torch.abs,
                                 torch.reciprocal})
_CONSTANT_METHODS = frozenset({"view", "reshape", "unsqueeze", "squeeze", "flatten", "permute",
                               "transpose", "contiguous", "clone", "detach", "float", "double",
                               "half", "neg", "reciprocal", "sqrt", "rsqrt", "exp", "abs", "add",
                               "sub", "mul", "div", "view_as", "reshape_as", "expand_as", "to"})
_RANK_METHODS = frozenset({"dim", "ndimension", "is_floating_point", "is_complex", "get_device"})
_SHAPE_METHODS = frozenset({"size", "numel"})
def _sig(*names, **keyword_only) -> inspect.Signature:
    return inspect.Signature(
        [Parameter(n, Parameter.POSITIONAL_OR_KEYWORD) for n in names]
        + [Parameter(k, Parameter.KEYWORD_ONLY, default=v) for k, v in keyword_only.items()])


def _defaults(*names, **defaults) -> inspect.Signature:
    """Positional-or-keyword parameters ``names``, then ``defaults`` (name=default)."""
    return inspect.Signature(
        [Parameter(n, Parameter.POSITIONAL_OR_KEYWORD) for n in names]
        + [Parameter(k, Parameter.POSITIONAL_OR_KEYWORD, default=v) for k, v in defaults.items()])


_CONV_SIG = _defaults("input", "weight", bias=None, stride=1, padding=0, dilation=1, groups=1)
_LINEAR_SIG = _defaults("input", "weight", bias=None)
_POOL_SIG = _defaults("input", "kernel_size", stride=None, padding=0, ceil_mode=False,
                      count_include_pad=True, divisor_override=None)
_ADD_SIG = _sig("input", "other", alpha=1, out=None)
_MUL_SIG = _sig("input", "other", out=None)
_DIV_SIG = _sig("input", "other", rounding_mode=None, out=None)
_PAD_SIG = _defaults("input", "pad", mode="constant", value=None)
#: elementwise arithmetic: callable -> (kind, signature; None for two positional operands)
_ARITH_FUNCTIONS = {
    operator.add: ("add", None), operator.sub: ("sub", None), operator.mul: ("mul", None),
    operator.truediv: ("div", None), torch.add: ("add", _ADD_SIG), torch.sub: ("sub", _ADD_SIG),
    torch.subtract: ("sub", _ADD_SIG), torch.mul: ("mul", _MUL_SIG),
    torch.multiply: ("mul", _MUL_SIG), torch.div: ("div", _DIV_SIG),
    torch.divide: ("div", _DIV_SIG), torch.true_divide: ("div", _MUL_SIG)}
#: the same as Tensor methods (the receiver is ``input``)
_ARITH_METHODS = {"add": ("add", _ADD_SIG), "sub": ("sub", _ADD_SIG),
                  "subtract": ("sub", _ADD_SIG), "mul": ("mul", _MUL_SIG),
                  "multiply": ("mul", _MUL_SIG), "div": ("div", _DIV_SIG),
                  "divide": ("div", _DIV_SIG), "true_divide": ("div", _MUL_SIG)}


def _np(t: torch.Tensor | None, n: int, fill: float) -> np.ndarray:
    """``t`` as a float64 numpy copy (never a view of the model's memory); ``fill`` if None."""
    if t is None:
        return np.full(n, fill)
    t = t.detach()
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float16):
        return t.numpy().astype(np.float64)  # the conversion is the copy
    return t.to("cpu", torch.float64).numpy().copy()


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Lifter:
    def __init__(self, traced: Traced, types: Types, effects: Effects):
        self.traced, self.types, self.effects = traced, types, effects
        self.constants: dict = {}  # fx node -> its constant value, or None

    # --- modules ------------------------------------------------------------------
    def module_refusal(self, m: nn.Module, x) -> Refusal | None:
        """Why module ``m`` (of a class the lifter knows) called on ``x`` stays opaque."""
        name = type(m).__name__
        if has_hooks(m):
            return Refusal("hooks", f"{name} has hooks, which may change what it computes")
        if "forward" in m.__dict__:
            return Refusal("subclass", f"{name} has its forward replaced on the instance")
        tensors = [t for t in list(m._parameters.values()) + list(m._buffers.values())
                   if t is not None]
        if any(id(t) in self.effects.mutated_tensors for t in tensors):
            return Refusal("effects", f"the model changes the parameters or buffers of this "
                                      f"{name} in place")
        if any(t.is_quantized or t.is_complex() or not (t.is_floating_point() or
                                                         t.dtype == torch.long)
               for t in tensors):
            return Refusal("dtype", f"{name} has parameters that are not real floating point")
        t = self.types.get(x)
        if t is None:
            note = f" ({self.types.note})" if self.types.note else ""
            return Refusal("type", f"the type of the input of this {name} is unknown{note}")
        if not t.is_float:
            return Refusal("dtype", f"{name} reads a {t.dtype} tensor")
        weight = next((v for v in tensors if v.is_floating_point()), None)
        if weight is not None and dtype_name(weight.dtype) != t.dtype:
            return Refusal("dtype", f"{name} has {dtype_name(weight.dtype)} parameters but reads "
                                    f"a {t.dtype} tensor")
        return None

    def module(self, node: fx.Node, m: nn.Module):
        cls, x = known_class(type(m), _KNOWN), node.args[0] if len(node.args) == 1 and not node.kwargs \
            else None
        if parametrize.is_parametrized(m):
            return None, Refusal("parametrized", f"{type(m).__name__} has parametrized weights")
        if cls is None:
            if isinstance(m, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)):
                qual = f"{type(m).__module__}.{type(m).__qualname__}"
                base = next((b for b in type(m).__mro__ if b in _KNOWN), None)
                if base is None:
                    return None, Refusal("unsupported", f"{qual} is not lifted")
                return None, Refusal("subclass", f"{qual} subclasses {base.__name__} and "
                                                 "overrides what it computes")
            return None, None
        if x is None:
            return None, Refusal("arguments", f"{cls.__name__} called with other arguments "
                                              "than one tensor")
        why = self.module_refusal(m, x)
        if why is not None:
            return None, why
        t = self.types.get(x)
        if cls is nn.Identity:
            return ("identity", {}), None
        if cls in _DROPOUTS:
            return (("identity", {}), None) if not m.training and not m.inplace else (None, None)
        if cls is nn.GroupNorm:
            if t.rank < 2 or t.channels != m.num_channels:
                return None, None
            c = m.num_channels
            return ("group_norm", {"groups": m.num_groups, "eps": float(m.eps),
                                   "weight": _np(m.weight, c, 1.0), "bias": _np(m.bias, c, 0.0)}), None
        if cls is nn.Linear:
            if t.rank != 2:
                return None, None  # features are the last dimension: dimension 1 only for (N, C)
            conv = Conv(_np(m.weight, 0, 0), _np(m.bias, m.out_features, 0.0), (), (), ())
            return ("conv", {"kernel": conv}), None
        if cls in CONV_TRANSPOSE_NDIM:
            if t.rank != CONV_TRANSPOSE_NDIM[cls] + 2:
                return None, Refusal("rank", f"{cls.__name__} reads a rank-{t.rank} tensor, "
                                             "not a batch (N, C, *spatial)")
            return ("conv_transpose", lift_conv_transpose(m)), None
        if cls in CONV_NDIM:
            if t.rank != CONV_NDIM[cls] + 2:
                return None, Refusal("rank", f"{cls.__name__} reads a rank-{t.rank} tensor, "
                                             "not a batch (N, C, *spatial)")
            return ("conv", lift_conv(m)), None
        if cls in _BN_RANKS:
            ranks = _BN_RANKS[cls]
            if m.training:
                return None, Refusal("training", f"{cls.__name__} is in training mode inside a "
                                                 "model in eval mode: it normalises with batch "
                                                 "statistics")
            if t.rank is None or t.rank < 2 or ranks is not None and t.rank not in ranks:
                return None, Refusal("rank", f"{cls.__name__} reads a rank-{t.rank} tensor")
            return ("bn", lift_bn(m)), None
        if t.channels is None or t.rank is None:
            return None, None
        if cls in _PAD_NDIM:
            nd = _PAD_NDIM[cls]
            if t.rank != nd + 2 or float(getattr(m, "value", 0.0)) != 0.0:
                return None, None
            return _pad_conv(t, list(m.padding)), None
        nd = _POOL_NDIM[cls]
        if t.rank != nd + 2 or getattr(m, "divisor_override", None):
            return None, None
        ks, st = _ints(m.kernel_size, nd), _ints(m.stride or m.kernel_size, nd)
        return _pool_conv(ks, st, _ints(m.padding, nd), m.ceil_mode, m.count_include_pad,
                          t.channels), None

    # --- functions and methods ----------------------------------------------------------
    def call(self, node: fx.Node):
        """(op, attrs, fx inputs) of a lifted call_function / call_method; else None, or a
        Refusal saying why a functional layer stays opaque."""
        if node.op == "call_function":
            if node.target is getattr:
                return self.metadata(node)
            handler = self.FUNCTIONAL.get(node.target)
            if handler is not None:
                return handler(self, node)
            entry = _ARITH_FUNCTIONS.get(node.target)
        else:
            receiver = node.args[0] if node.args else None
            if self.types.get(receiver) is None:
                return None
            if node.target in _RANK_METHODS or node.target in _SHAPE_METHODS:
                return self.metadata(node)
            entry = _ARITH_METHODS.get(node.target)
        if entry is None:
            return None
        kind, sig = entry
        if sig is None:
            if len(node.args) != 2 or node.kwargs:
                return None
            a, b, alpha = node.args[0], node.args[1], 1
        else:
            args = bind_arguments(sig, node.args, node.kwargs)
            if args is None:
                return None
            if args["out"] is not None or args.get("rounding_mode") is not None:
                return None
            a, b, alpha = args["input"], args["other"], args.get("alpha", 1)
            if not _number(alpha):
                return None
        return self.arith(node, kind, a, b, float(alpha))

    def arith(self, node: fx.Node, kind: str, a, b, alpha: float):
        types = self.types
        out = types.get(node)
        if out is None or not out.is_float:
            return None
        computed = [isinstance(v, fx.Node) and self.stored(v) is None for v in (a, b)]
        if all(computed):
            ta, tb = types.get(a), types.get(b)
            if kind not in ("add", "sub") or ta != out or tb != out \
                    or not (types.same_shape(a, node) and types.same_shape(b, node)):
                return None
            return "add", {"coeffs": (1.0, alpha if kind == "add" else -alpha)}, [a, b]
        if not any(computed):
            return None
        slot = 0 if computed[0] else 1
        x, c = (a, b) if slot == 0 else (b, a)
        tx = types.get(x)
        if tx != out or tx.channels is None or not types.same_shape(x, node):
            return None  # the result is promoted or broadcast: not an affine map of x
        value = self.constant(c)
        if value is None or value.ndim > tx.rank:
            return None
        shape = (1,) * (tx.rank - value.ndim) + value.shape
        if any(s != 1 for k, s in enumerate(shape) if k != 1) or shape[1] not in (1, tx.channels):
            return None
        v = np.broadcast_to(value.reshape(-1), (tx.channels,)).astype(np.float64)
        one, zero = np.ones(tx.channels), np.zeros(tx.channels)
        if kind == "div" and (slot == 1 or np.any(v == 0)):
            return None
        if kind == "div":
            weight, shift = 1.0 / v, zero
        else:
            weight, shift = {("add", 0): (one, alpha * v), ("add", 1): (alpha * one, v),
                             ("sub", 0): (one, -alpha * v), ("sub", 1): (-alpha * one, v),
                             ("mul", 0): (v, zero), ("mul", 1): (v, zero)}[(kind, slot)]
        attrs = {"mean": zero, "var": one.copy(), "eps": 0.0, "weight": weight, "bias": shift,
                 "affine": kind}
        return "bn", attrs, [x] + ([c] if isinstance(c, fx.Node) else [])

    def constant(self, c) -> np.ndarray | None:
        """A Python number or a stored real floating-point tensor nothing changes, as float64."""
        if _number(c):
            return np.array(float(c))
        t = self.stored(c)
        return None if t is None else t.detach().to("cpu", torch.float64).numpy().copy()

    def metadata(self, node: fx.Node):
        """``x.shape``, ``x.ndim``, ``x.size(1)``, ``x.dim()``, ... of a tensor: a ``meta`` read."""
        x = node.args[0] if node.args else None
        if self.types.get(x) is None or any(isinstance(a, fx.Node) for a in
                                            list(node.args[1:]) + list(node.kwargs.values())):
            return None
        if node.op == "call_function":
            if len(node.args) != 2 or node.kwargs:
                return None
            what = node.args[1]
            reads = "rank" if what in _RANK_ATTRS else "shape" if what == "shape" else None
        else:
            reads = "rank" if node.target in _RANK_METHODS else "shape"
        return None if reads is None else ("meta", {"reads": reads}, [x])

    def stored(self, c) -> torch.Tensor | None:
        """The real floating-point tensor an fx node always has: a stored tensor nothing
        changes (get_attr), or a view or elementwise function of such tensors and numbers
        (:data:`_CONSTANT_FUNCTIONS`, :data:`_CONSTANT_METHODS`), computed here."""
        if not isinstance(c, fx.Node):
            return None
        if c not in self.constants:
            self.constants[c] = self._evaluate(c)
        return self.constants[c]

    def _evaluate(self, c: fx.Node) -> torch.Tensor | None:
        if c.op == "get_attr":
            t = self.traced.fetch(c.target)
            ok = isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_quantized \
                and id(t) not in self.effects.mutated_tensors
            return t if ok else None
        known = c.target in _CONSTANT_FUNCTIONS if c.op == "call_function" else \
            c.target in _CONSTANT_METHODS if c.op == "call_method" else False
        if not known or self.effects.mutates.get(c):
            return None
        args = []
        for a in list(c.args) + list(c.kwargs.values()):
            if isinstance(a, fx.Node):
                if self.stored(a) is None:
                    return None
            elif not (_number(a) or a is None or isinstance(a, (torch.dtype, str)) or
                      isinstance(a, (tuple, list)) and all(_number(i) for i in a)):
                return None
        env = lambda a: self.stored(a) if isinstance(a, fx.Node) else a  # noqa: E731
        args, kwargs = fx.node.map_arg(c.args, env), fx.node.map_arg(c.kwargs, env)
        with torch.no_grad():
            try:
                t = getattr(args[0], c.target)(*args[1:], **kwargs) if c.op == "call_method" \
                    else c.target(*args, **kwargs)
            except Exception:
                return None
        return t if isinstance(t, torch.Tensor) and t.is_floating_point() else None

    def _operands(self, args: dict, x_key: str, tensor_keys: tuple, nd: int | None):
        """The typed input ``args[x_key]`` of rank ``nd + 2`` (any rank >= 2 for None) and the
        stored tensors ``args[k]`` (None stays None), or a Refusal."""
        x, t = args[x_key], self.types.get(args[x_key])
        if t is None:
            return Refusal("type", "the type of its input is unknown" +
                           (f" ({self.types.note})" if self.types.note else ""))
        if not t.is_float or t.rank is None or (t.rank != nd + 2 if nd is not None
                                                else t.rank < 2):
            return Refusal("rank" if t.is_float else "dtype",
                           f"its input is a rank-{t.rank} {t.dtype} tensor")
        tensors = []
        for k in tensor_keys:
            v = args[k]
            stored = None if v is None else self.stored(v)
            if v is not None and stored is None:
                return Refusal("arguments", f"its {k} is not a stored tensor that nothing changes")
            if stored is not None and dtype_name(stored.dtype) != t.dtype:
                return Refusal("dtype", f"its {k} is {dtype_name(stored.dtype)}, its input {t.dtype}")
            tensors.append(stored)
        return x, t, tensors

    def conv_function(self, node: fx.Node):
        nd = _CONV_FUNCTIONS[node.target]
        args = _bind(_CONV_SIG, node)
        if args is None:
            return Refusal("arguments", "arguments that do not bind to conv's signature")
        found = self._operands(args, "input", ("weight", "bias"), nd)
        if isinstance(found, Refusal):
            return found
        x, t, (w, b) = found
        if w is None or w.dim() != nd + 2:
            return Refusal("arguments", "its weight is not a stored kernel")
        ks = tuple(w.shape[2:])
        stride, dilation = _ints(args["stride"], nd), _ints(args["dilation"], nd)
        groups, padding = args["groups"], args["padding"]
        if padding == "same":
            pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                         for d, k in zip(dilation or (), ks))
        elif padding == "valid":
            pads = ((0, 0),) * nd
        else:
            pads = _ints(padding, nd)
            pads = None if pads is None else tuple((p, p) for p in pads)
        if None in (stride, dilation, pads) or not isinstance(groups, int) \
                or isinstance(groups, bool) or w.shape[1] * groups != t.channels:
            return Refusal("arguments", "stride, padding, dilation or groups not plain ints")
        conv = Conv(_np(w, 0, 0), _np(b, w.shape[0], 0.0), stride, pads, dilation, groups)
        return "conv", {"kernel": conv}, [x] + _nodes(args, ("weight", "bias"))

    def linear_function(self, node: fx.Node):
        args = _bind(_LINEAR_SIG, node)
        if args is None:
            return Refusal("arguments", "arguments that do not bind to linear's signature")
        found = self._operands(args, "input", ("weight", "bias"), 0)
        if isinstance(found, Refusal):
            return found
        x, t, (w, b) = found
        if w is None or w.dim() != 2 or w.shape[1] != t.channels:
            return Refusal("arguments", "its weight is not a stored matrix")
        conv = Conv(_np(w, 0, 0), _np(b, w.shape[0], 0.0), (), (), ())
        return "conv", {"kernel": conv}, [x] + _nodes(args, ("weight", "bias"))

    def batch_norm_function(self, node: fx.Node):
        args = _bind(_signature(node.target), node)
        if args is None:
            return Refusal("arguments", "arguments that do not bind to batch_norm's signature")
        if args["training"] is not False:
            return Refusal("training", "it normalises with batch statistics (training is not "
                                       "False)")
        found = self._operands(args, "input", ("running_mean", "running_var", "weight", "bias"),
                               None)
        if isinstance(found, Refusal):
            return found
        x, t, (mean, var, w, b) = found
        if mean is None or var is None:
            return Refusal("stats", "it has no running statistics")
        eps = args["eps"]
        if not _number(eps) or mean.numel() != t.channels:
            return Refusal("arguments", "eps is not a number, or the statistics do not match "
                                        "the channels")
        c = t.channels
        attrs = {"eps": float(eps), "weight": _np(w, c, 1.0), "bias": _np(b, c, 0.0),
                 "mean": _np(mean, c, 0.0), "var": _np(var, c, 1.0)}
        keys = ("running_mean", "running_var", "weight", "bias")
        return "bn", attrs, [x] + _nodes(args, keys)

    def pool_function(self, node: fx.Node):
        nd = _POOL_FUNCTIONS[node.target]
        args = _bind(_POOL_SIG, node)
        if args is None or args["divisor_override"] is not None:
            return None
        t = self.types.get(args["input"])
        if t is None or not t.is_float or t.rank != nd + 2 or t.channels is None:
            return None
        ks = _ints(args["kernel_size"], nd)
        st = ks if args["stride"] is None or args["stride"] == [] else _ints(args["stride"], nd)
        pd = _ints(args["padding"], nd)
        if None in (ks, st, pd) or not all(isinstance(args[k], bool) for k in
                                             ("ceil_mode", "count_include_pad")):
            return None
        lifted = _pool_conv(ks, st, pd, args["ceil_mode"], args["count_include_pad"], t.channels)
        return (*lifted, [args["input"]])

    def pad(self, node: fx.Node):
        args = _bind(_PAD_SIG, node)
        if args is None:
            return None
        x, flat, t = args["input"], args["pad"], self.types.get(args["input"])
        if args["mode"] != "constant" or args["value"] not in (None, 0) \
                or isinstance(args["value"], bool) or t is None or not t.is_float \
                or t.channels is None or not isinstance(flat, (list, tuple)) \
                or not all(isinstance(p, int) and not isinstance(p, bool) for p in flat):
            return None
        if len(flat) % 2 or len(flat) // 2 > t.rank - 2:
            return None
        lifted = _pad_conv(t, list(flat))
        return None if lifted is None else (*lifted, [x])

    def dropout(self, node: fx.Node):
        """Dropout at inference (``training=False``, not in place): the input itself."""
        args = _bind(_signature(node.target), node)
        if args is None or args["training"] is not False or args["inplace"] is not False \
                or self.types.get(args["input"]) is None:
            return None
        return "identity", {}, [args["input"]]

    FUNCTIONAL = {torch.conv1d: conv_function, torch.conv2d: conv_function,
                  torch.conv3d: conv_function, F.linear: linear_function,
                  F.batch_norm: batch_norm_function, torch.batch_norm: batch_norm_function,
                  F.avg_pool1d: pool_function, F.avg_pool2d: pool_function,
                  F.avg_pool3d: pool_function, F.pad: pad,
                  **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
                                   F.alpha_dropout, F.feature_alpha_dropout), dropout)}

    # --- the whole graph ------------------------------------------------------------------
    def classify(self, node: fx.Node):
        """IR op, attrs and the fx nodes that are its IR inputs, for one fx node."""
        first = [node.args[0]] if node.args else []
        if node.op == "call_module":
            m = self.traced.fetch(node.target)
            lifted, why = self.module(node, m)
            if lifted is not None:
                return lifted[0], lifted[1], first
            attrs = {"label": type(m).__name__}
            if why is not None and isinstance(m, (nn.modules.conv._ConvNd,
                                                  nn.modules.batchnorm._NormBase)):
                attrs["why"] = why
            return OPAQUE, attrs, list(node.all_input_nodes)
        if node.op == "get_attr":
            return "constant", {}, []
        if node.op in ("call_function", "call_method") and self.stored(node) is not None:
            return "constant", {}, list(node.all_input_nodes)
        lifted = self.call(node) if node.op in ("call_function", "call_method") else None
        if lifted is not None and not isinstance(lifted, Refusal):
            return lifted
        attrs = {"label": _label(node)}
        if node.op == "call_function" and node.target in _FUNCTIONAL_LAYERS:
            attrs["why"] = lifted if lifted is not None else Refusal(
                "unsupported", f"{_label(node)} (a functional layer) is not lifted")
        return OPAQUE, attrs, list(node.all_input_nodes)

    def lift(self) -> Graph:
        graph = Graph()
        ir_of: dict[fx.Node, Node] = {}
        for node in self.traced.graph.nodes:
            op, attrs, fx_inputs = self.classify(node)
            attrs["fx_inputs"] = fx_inputs
            name = node.target if node.op == "call_module" else node.name
            ir_of[node] = graph.add(op, [ir_of[i] for i in fx_inputs], attrs, name, origin=node,
                                    type=self.types.get(node))
        for node, aliases in self.effects.aliases.items():
            for i in aliases:
                graph.unite(ir_of[node], ir_of[i])
        for node, changed in self.effects.mutates.items():
            for i in changed:
                graph.mark_mutation(ir_of[i], by=ir_of[node])
        return graph


def _label(node: fx.Node) -> str:
    """A readable, qualified name of what an fx node calls."""
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op != "call_function":
        return {"placeholder": "<input>", "output": "<output>"}.get(node.op, node.op)
    t = node.target
    name = getattr(t, "__name__", str(t))
    module = getattr(t, "__module__", None) or ""
    module = "operator" if module == "_operator" else module
    return f"{module}.{name}" if module else name


def _conv_pads(m: nn.Module) -> tuple[tuple[int, int], ...]:
    nd = len(m.kernel_size)
    if m.padding == "valid":
        return ((0, 0),) * nd
    if m.padding == "same":  # torch puts the odd extra pad at the end
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in m.padding)


def lift_conv(m: nn.Module) -> dict:
    return _kernel_attrs(m, Conv(_np(m.weight, 0, 0), _np(m.bias, m.weight.shape[0], 0.0),
                                 tuple(m.stride), _conv_pads(m), tuple(m.dilation), m.groups))


def lift_conv_transpose(m: nn.Module) -> dict:
    return _kernel_attrs(m, kernel.ConvTranspose(
        _np(m.weight, 0, 0), _np(m.bias, m.out_channels, 0.0), tuple(m.stride),
        tuple((p, p) for p in m.padding), tuple(m.dilation), tuple(m.output_padding), m.groups))


def _kernel_attrs(m: nn.Module, k) -> dict:
    """The attrs of a lifted conv-like module: its kernel, and why it may not change."""
    attrs = {"kernel": k}
    if m.padding_mode != "zeros":
        attrs["refuse"] = Refusal("padding-mode", f"padding_mode={m.padding_mode!r} is not zero "
                                                  "padding")
    return attrs


def lift_bn(m: nn.Module) -> dict:
    c = m.num_features
    attrs = {"eps": float(m.eps), "weight": _np(m.weight, c, 1.0), "bias": _np(m.bias, c, 0.0)}
    if m.running_mean is None or m.running_var is None:
        attrs["refuse"] = Refusal("stats", "BatchNorm has no running statistics "
                                           "(track_running_stats=False): it normalises with "
                                           "batch statistics at inference")
    else:
        attrs["mean"], attrs["var"] = _np(m.running_mean, c, 0), _np(m.running_var, c, 1)
    return attrs


def _pad_conv(t, flat: list):
    """A zero pad of the last ``len(flat) / 2`` dimensions (torch's order: last first) of a
    tensor of type ``t``, as an identity kernel with that padding."""
    pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)][::-1]
    if any(p < 0 for pair in pairs for p in pair):
        return None
    pads = ((0, 0),) * (t.rank - 2 - len(pairs)) + tuple(pairs)
    return "conv", {"kernel": kernel.identity(t.channels, ndim=t.rank - 2).replace(pads=pads),
                    "pad": True}


def _pool_conv(ks, st, pd, ceil_mode: bool, count_include_pad: bool, channels: int):
    """An average pool (kernel, stride, symmetric padding per dimension) as a conv."""
    k = kernel.avgpool(channels, ks, st, tuple((p, p) for p in pd), count_include_pad, ceil_mode)
    if not k:
        return "conv", {"kernel": None, "refuse": k, "pool": True}
    return "conv", {"kernel": k, "pool": True}


def _ints(v, n: int) -> tuple | None:
    """An int or a sequence of ``n`` ints (as torch takes them) as ``n`` ints; else None."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,) * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(
            isinstance(i, int) and not isinstance(i, bool) for i in v):
        return tuple(v)
    return None


def _bind(sig: inspect.Signature, node: fx.Node) -> dict | None:
    """The arguments of ``node`` by parameter name, defaults filled in; None if they do not
    bind to ``sig``."""
    return bind_arguments(sig, node.args, node.kwargs)


def _nodes(args: dict, keys) -> list:
    return [args[k] for k in keys if isinstance(args[k], fx.Node)]


def lift(traced: Traced, types: Types, effects: Effects) -> Graph:
    """The typed IR of ``traced``'s graph; every node keeps its fx node as ``origin``."""
    return _Lifter(traced, types, effects).lift()
