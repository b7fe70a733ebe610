"""Side effects for the torch.fx frontend: what a call may change in place, and which
results may share memory with their inputs.

Known by identity (the exact callable or module class), never by a name
alone:

* torch functions and Tensor methods (the callable is the attribute of that
  name of ``torch``, ``torch.nn.functional``, ``torch.special``,
  ``torch.linalg``, ``torch.fft`` or a Tensor method) change nothing in place
  unless torch's own convention says so: a name ending in ``_``, an
  ``inplace=True`` argument, or an ``out=`` tensor;
* ``operator.setitem`` and the augmented-assignment operators change their
  first operand;
* modules of the exact torch.nn classes in :data:`KNOWN_MODULES` change
  nothing but with ``inplace=True`` (their own state, such as a training
  BatchNorm's statistics, is theirs);
* anything else - a user function, a module of another class, a module with
  hooks - may change every tensor it is given, and its result may alias them.

A result is taken to alias its inputs unless the callable is known to return a
new tensor (:data:`FRESH_FUNCTIONS`, :data:`FRESH_METHODS`, modules not in
:data:`VIEW_MODULES`): aliasing matters only for tensors something changes in
place, and there guessing "new" would be unsound.
"""
from __future__ import annotations

import functools
import inspect
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
import torch.nn.functional as F

from .fx_traced import Traced

#: torch.nn classes whose forward changes nothing it is given, unless ``inplace=True``
KNOWN_MODULES = frozenset({
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Linear, nn.Identity,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.PReLU, nn.Hardtanh, nn.Softplus, nn.Softmax,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Upsample,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d})
#: known classes whose result may be their input itself or a view of it
VIEW_MODULES = frozenset({nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d,
                          nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout})
#: torch functions that always return a new tensor
FRESH_FUNCTIONS = frozenset({
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.neg, torch.matmul, torch.mm, torch.bmm, torch.cat, torch.stack,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.mean, torch.sum, torch.amax,
    torch.conv1d, torch.conv2d, torch.conv3d, torch.layer_norm,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.mish,
    F.leaky_relu, F.elu, F.softmax, F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d,
    F.conv_transpose2d, F.conv_transpose3d, F.layer_norm, F.group_norm, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d,
    F.max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.interpolate, operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    operator.matmul})
#: Tensor methods that always return a new tensor
FRESH_METHODS = frozenset({"add", "sub", "mul", "div", "neg", "matmul", "relu", "sigmoid", "tanh",
                           "exp", "mean", "sum", "amax", "softmax", "clone"})
_INPLACE_OPERATORS = frozenset({operator.setitem, operator.iadd, operator.isub, operator.imul,
                                operator.itruediv, operator.ifloordiv, operator.imod,
                                operator.ipow, operator.imatmul, operator.iand, operator.ior,
                                operator.ixor, operator.ilshift, operator.irshift})
_NAMESPACES = (torch, F, torch.special, torch.linalg, torch.fft)


#: what a subclass may define and still compute exactly what its torch.nn base class does
#: (its ``__init__`` only sets the attributes the base's forward reads)
_HARMLESS = frozenset({"__module__", "__qualname__", "__doc__", "__init__", "__dict__",
                       "__weakref__", "__annotations__", "__firstlineno__",
                       "__static_attributes__", "__orig_bases__", "__parameters__",
                       "extra_repr", "reset_parameters"})


@functools.lru_cache(maxsize=None)
def known_class(cls: type, known: frozenset = KNOWN_MODULES) -> type | None:
    """The class of ``known`` that ``cls`` computes as: itself, or the base of a subclass
    that defines nothing but :data:`_HARMLESS` attributes (a renamed class); else None."""
    for c in cls.__mro__:
        if c in known:
            return c
        if set(vars(c)) - _HARMLESS:
            return None
    return None


def is_torch_function(target) -> bool:
    """``target`` is the very function a torch namespace exports under its name."""
    name = getattr(target, "__name__", None)
    return isinstance(name, str) and any(getattr(ns, name, None) is target for ns in _NAMESPACES)


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def has_hooks(m: nn.Module) -> bool:
    """Forward or backward hooks on ``m``, or global module hooks (they run on every call)."""
    d = m.__dict__
    if d.get("_forward_hooks") or d.get("_forward_pre_hooks") or d.get("_backward_hooks") \
            or d.get("_backward_pre_hooks"):
        return True
    return any(getattr(torch.nn.modules.module, name, None) for name in _GLOBAL_HOOKS)


#: functions that update running statistics given to them when in training mode:
#: callable -> (names of the statistics arguments, the mode argument)
_STATS_UPDATES = {F.batch_norm: (("running_mean", "running_var"), "training"),
                  torch.batch_norm: (("running_mean", "running_var"), "training"),
                  F.instance_norm: (("running_mean", "running_var"), "use_input_stats")}
#: torch.batch_norm is a builtin without a signature: its documented parameters
_TORCH_BATCH_NORM = inspect.Signature([
    inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in (
        "input", "weight", "bias", "running_mean", "running_var", "training", "momentum",
        "eps", "cudnn_enabled")])


@functools.lru_cache(maxsize=None)
def signature(target) -> inspect.Signature:
    """The signature of a torch function (torch.batch_norm's, which has none, written out)."""
    return _TORCH_BATCH_NORM if target is torch.batch_norm else inspect.signature(target)


_PLAIN_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def bind_arguments(sig: inspect.Signature, args, kwargs) -> dict | None:
    """The arguments of a call by parameter name, defaults filled in, as
    ``sig.bind(*args, **kwargs)`` and ``apply_defaults`` make them; None where they do not
    bind. (Worked out here for parameters that are neither positional-only nor variadic,
    at a fraction of the cost.)"""
    found, taken = {}, 0
    for name, p in sig.parameters.items():
        if p.kind not in _PLAIN_KINDS:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:
                return None
            bound.apply_defaults()
            return dict(bound.arguments)
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and taken < len(args):
            if name in kwargs:  # given twice
                return None
            found[name] = args[taken]
            taken += 1
        elif name in kwargs:
            found[name] = kwargs[name]
        elif p.default is not p.empty:
            found[name] = p.default
        else:  # missing
            return None
    if taken < len(args) or any(k not in found for k in kwargs):
        return None
    return found


def _updated_statistics(target, args, kwargs) -> list | None:
    """The statistics tensors a batch/instance norm call updates in place ([] when it is not
    in training mode), or None when its arguments do not bind."""
    names, mode = _STATS_UPDATES[target]
    bound = bind_arguments(signature(target), args, kwargs)
    if bound is None:
        return None
    if bound.get(mode) is False:
        return []
    return [bound[n] for n in names if isinstance(bound[n], fx.Node)]


@functools.lru_cache(maxsize=None)
def _takes_inplace(target) -> bool:
    """Whether ``target``'s signature has an ``inplace`` parameter (False for a builtin
    without a signature)."""
    try:
        return "inplace" in signature(target).parameters
    except (TypeError, ValueError):
        return False


def _inplace_argument(target, args, kwargs) -> bool:
    if kwargs.get("inplace") is True:
        return True
    if not _takes_inplace(target):  # no binding gives it one (a builtin without signature:
        return False                # only keywords were seen)
    bound = bind_arguments(signature(target), args, kwargs)
    return bound is not None and bound.get("inplace") is True


@dataclass
class Effects:
    """For each fx node: the inputs its result may alias and those it may change in place."""

    aliases: dict = field(default_factory=dict)
    mutates: dict = field(default_factory=dict)
    mutated_tensors: set = field(default_factory=set)  # ids of stored tensors changed in place


def _call_effects(node: fx.Node, traced: Traced, tensors: list):
    """(inputs the result may alias, inputs changed in place) of one call of ``traced``."""
    first = [node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else []
    out = node.kwargs.get("out", ())
    out = [v for v in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(v, fx.Node)]
    if node.op == "call_module":
        m = traced.fetch(node.target)
        cls = known_class(type(m))
        if cls is None or has_hooks(m) or "forward" in m.__dict__:
            return tensors, tensors
        if getattr(m, "inplace", False) is True:
            return tensors, first
        return (tensors if cls in VIEW_MODULES else []), []
    target = node.target
    if node.op == "call_function":
        if target in _INPLACE_OPERATORS:
            return tensors, first
        if target in _STATS_UPDATES:  # in training, running statistics are updated in place
            changed = _updated_statistics(target, node.args, node.kwargs)
            if changed is None:
                return tensors, tensors
            return [], changed
        if target in FRESH_FUNCTIONS and not out and not _inplace_argument(target, node.args,
                                                                            node.kwargs):
            return [], []
        if getattr(target, "__module__", None) in ("_operator", "operator") \
                or target is getattr or is_torch_function(target):
            name = getattr(target, "__name__", "")
            changed = first if name.endswith("_") or _inplace_argument(target, node.args,
                                                                       node.kwargs) else []
            return tensors, changed + out
        return tensors, tensors
    # call_method on a tensor
    changed = (first if target.endswith("_") else []) + out
    fresh = target in FRESH_METHODS and not changed
    return ([] if fresh else tensors), changed


def analyse(traced: Traced, types) -> Effects:
    """The effects of every node of ``traced`` (``types``: a :class:`fx_types.Types`; without
    types every input node is taken for a tensor)."""
    fx_effects = Effects()
    parent: dict = {}

    def root(n):
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    typed = bool(types.of)
    mutated_roots = set()
    for node in traced.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        tensors = [i for i in node.all_input_nodes if not typed or types.get(i) is not None]
        if node.op == "call_method" and typed and (not node.args or types.get(node.args[0]) is None):
            aliases, changed = tensors, tensors  # not a Tensor method: unknown
        else:
            aliases, changed = _call_effects(node, traced, tensors)
        fx_effects.aliases[node] = aliases
        fx_effects.mutates[node] = changed
        for i in aliases:
            a, b = root(node), root(i)
            if a is not b:
                parent[a] = b
        mutated_roots.update(changed)
    mutated = {root(i) for i in mutated_roots}
    for node in traced.graph.nodes:
        if node.op == "get_attr" and root(node) in mutated:
            fx_effects.mutated_tensors.add(id(traced.fetch(node.target)))
    return fx_effects
