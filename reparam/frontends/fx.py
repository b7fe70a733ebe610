"""torch.fx frontend: fold a ``nn.Module`` and check the result.

:func:`fuse_module` traces the model (:func:`trace`), lifts its fx graph into
the IR (:mod:`reparam.frontends.fx_lift`), rewrites it and lowers it back to a
GraphModule (:mod:`reparam.frontends.fx_lower`); where the whole model does not
trace, :func:`fuse_parts` fuses its largest traceable submodules.
:func:`verify` compares the fused module with the original on example inputs.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import sys
import warnings
from collections import OrderedDict

import torch
from torch import fx, nn

from .fx_copy import copy_model
from .fx_effects import analyse
from .fx_inplace import AUGMENTED_OPS, InplaceProxy, pure_assignments
from .fx_lift import lift
from .fx_lower import lower
from .fx_traced import Traced
from .fx_types import capture_inputs, propagate


#: default verification tolerance, relative to max|reference|, per dtype
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


#: argument types that fx stores in a graph as they are (and that hold no traced value)
_PLAIN_ARGS = frozenset({int, float, bool, str, type(None)})
#: containers that hold nothing when empty (a module's hook tables, mostly)
_EMPTY_WHEN_FALSE = frozenset({list, tuple, set, frozenset, dict, OrderedDict})


def _holds_proxy(v, depth: int = 2) -> bool:
    if type(v) in _PLAIN_ARGS:
        return False
    if isinstance(v, fx.Proxy):
        return True
    if depth and isinstance(v, (list, tuple, set, frozenset)):
        return any(_holds_proxy(x, depth - 1) for x in v)
    if depth and isinstance(v, dict):
        return any(_holds_proxy(x, depth - 1) for x in v.values())
    return False


def _stored_proxy(model: nn.Module) -> str | None:
    """The first plain attribute of a module of ``model`` (just traced) that holds a traced
    value - a forward that appends features to a list, or keeps its last output - as
    ``'attr' of module 'path'``; None when there is none."""
    for path, m in model.named_modules():
        for k, v in vars(m).items():
            t = type(v)
            if t in _PLAIN_ARGS or t in _EMPTY_WHEN_FALSE and not v or k in _MODULE_STATE:
                continue
            if _holds_proxy(v):
                return f"{k!r} of module {path or '<model>'!r}"
    return None


#: nn.Module's own bookkeeping attributes (never a forward's side effect)
_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules"})


def _autocast_state() -> tuple:
    """Whether autocast is on, for the CPU and for CUDA."""
    try:
        return torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled(), torch.is_autocast_enabled()


class _ModuleStack(OrderedDict):
    """The tracer's record of the modules being called, which fx copies for every node it
    makes (its ``nn_module_stack`` meta): as ``copy.copy`` would, into a plain OrderedDict,
    without the pickling protocol that copies an OrderedDict five times slower."""

    def __copy__(self):
        return OrderedDict(self)


class _Tracer(fx.Tracer):
    """symbolic tracing that also keeps the caller's ``leaf_modules`` (instances or classes) opaque."""

    def __init__(self, leaf_modules=()):
        super().__init__()
        self.module_stack = _ModuleStack(self.module_stack)
        self.leaf_ids = {id(m) for m in leaf_modules if isinstance(m, nn.Module)}
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.autocast_at_start, self.autocast_changed = _autocast_state(), False

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        # torch.fx does not record torch.autocast regions: the graph of a forward that enters
        # one computes in other dtypes than the forward (see trace)
        if _autocast_state() != self.autocast_at_start:
            self.autocast_changed = True
        return super().create_node(kind, target, args, kwargs, name, type_expr)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return InplaceProxy(node, self)  # a += b is traced as the in-place call it is

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (id(m) in self.leaf_ids or isinstance(m, self.leaf_types)
                or super().is_leaf_module(m, qualname))

    def release(self) -> None:
        """Drop everything the tracer holds. torch.fx's patcher leaves it in a reference cycle,
        which would keep the traced model (and all it holds) for the cyclic garbage collector
        rather than freeing it once fuse is done with it."""
        self.__dict__.clear()

    def _tables(self):
        """The root's parameter and buffer names by tensor id (the first name of a shared one,
        as fx's searches find it), made once: fx searches them all at every access, which is
        quadratic in model size."""
        if not hasattr(self, "_names"):  # in the order of named_parameters / named_buffers
            self._names = params, buffers = {}, {}
            for path, m in self.root.named_modules():
                for table, names in ((m._parameters, params), (m._buffers, buffers)):
                    for k, t in table.items():
                        if t is not None:
                            names.setdefault(id(t), f"{path}.{k}" if path else k)
        return self._names

    def create_arg(self, a):
        t = type(a)
        if t is InplaceProxy:  # the common cases, as fx's own create_arg treats them, without its
            return a.node  # checks for constants and opaque types (a third of tracing)
        if t in _PLAIN_ARGS:
            return a
        if t is tuple or t is list:
            return t(self.create_arg(v) for v in a)
        if isinstance(a, torch.Tensor) and type(a) in (torch.Tensor, nn.Parameter):
            params, buffers = self._tables()
            name = (params if isinstance(a, nn.Parameter) else buffers).get(id(a))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        """fx's own lookup, with the names from :meth:`_tables`."""
        if not isinstance(attr_val, torch.Tensor):
            return attr_val
        params, buffers = self._tables()
        name = params.get(id(attr_val)) if isinstance(attr_val, nn.Parameter) else None
        if name is None and self.proxy_buffer_attributes:
            name = buffers.get(id(attr_val))
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]


def trace(model: nn.Module, leaf_modules=(), concrete_args=None) -> Traced:
    """The fx graph of ``model``; a GraphModule's own is used as it is (re-tracing would rename
    nodes)."""
    if isinstance(model, fx.GraphModule) and not leaf_modules and concrete_args is None:
        return Traced(model, model.graph, rebuilt=False)
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args)
        autocast_changed = tracer.autocast_changed
    finally:
        tracer.release()
    leak = _stored_proxy(model)
    if leak:
        raise fx.proxy.TraceError(f"{type(model).__name__}'s forward stores a traced value in "
                                  f"{leak}, outside what it returns: torch.fx does not record "
                                  "that (the graph would not store it)")
    if autocast_changed:
        raise fx.proxy.TraceError(f"{type(model).__name__}'s forward runs part of itself under "
                                  "torch.autocast, which torch.fx does not record (its graph "
                                  "would compute in other dtypes)")
    if concrete_args:  # fx names a bound argument's placeholder "<name>_1": callers pass
        import inspect   # it by its own name

        names = list(inspect.signature(model.forward).parameters)
        for node, name in zip((n for n in graph.nodes if n.op == "placeholder"), names):
            node.target = name
    return Traced(model, graph)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def as_args(example_inputs) -> tuple:
    """``example_inputs`` as the tuple of positional arguments of a forward call."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    return tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)


def _training_batchnorms(model: nn.Module) -> list[str]:
    return [name or "<model>" for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection for the duration: copying and tracing a model makes tens
    of thousands of objects, and each collection they trigger walks all of them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fuse_module(model: nn.Module, rules, example_inputs=None, rtol: float | None = None,
                leaf_modules=(), concrete_args=None):
    """Rewrite a deep copy of ``model`` with ``rules``; see :func:`fuse_copy`."""
    with _gc_paused():
        return fuse_copy(model, rules, example_inputs, rtol, leaf_modules, concrete_args)


def fuse_copy(model: nn.Module, rules, example_inputs=None, rtol: float | None = None,
              leaf_modules=(), concrete_args=None):
    """Rewrite a deep copy of ``model`` with ``rules``; returns ``(module, Report)``.

    The module is a GraphModule when the whole model traces; otherwise the copy
    of ``model`` with its largest traceable submodules replaced by their fused
    GraphModules (see :func:`fuse_parts`). ``model`` itself is never touched:
    tracing, shape propagation and rewriting all work on the copy, and the check
    against ``example_inputs`` runs another copy.
    """
    from ..errors import ReparamError, TraceError

    problem = unfusable(model)
    if problem:
        raise ReparamError(problem)
    notes = []
    try:
        reference = copy_model(model) if example_inputs is not None else None
        work, leaves = copied(model, leaf_modules)
    except Exception as e:
        raise ReparamError(f"cannot copy the model (reparam.fuse never changes the model it is "
                           f"given, so it works on a copy): {_first_line(e)}; fuse needs a "
                           "model that copy.deepcopy can copy (no open files, locks or other "
                           "objects that refuse to be copied in its attributes)") from e
    if model.training:
        msg = ("model is in training mode: folding uses BatchNorm running statistics "
               "(inference semantics); the fused model is returned in eval mode")
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append("note: " + msg)
        work.eval()
        if reference is not None:
            reference.eval()
    else:
        training = _training_batchnorms(model)
        if training:
            msg = (f"BatchNorm in training mode inside a model in eval mode, left as it is (it "
                   f"normalises with batch statistics): {', '.join(training)}")
            warnings.warn(msg, UserWarning, stacklevel=3)
            notes.append("note: " + msg)
    runs = None if example_inputs is None else [list(as_args(example_inputs))]
    try:
        traced = trace(work, leaves, concrete_args)
    except Exception as e:  # the tracer raises many kinds; fall back to the parts
        calls = capture_inputs(work, as_args(example_inputs)) if runs is not None else {}
        # the trace (and the capture) ran the forward on the copy, which may have kept some
        work, leaves = copied(model, leaf_modules)  # of it (a list it appends to): copy anew
        if model.training:
            work.eval()
        fused, report = fuse_parts(work, rules, leaves, calls)
        if not report.before:
            raise TraceError(f"torch.fx could not trace {type(model).__name__} nor any of "
                             f"its submodules: {_first_line(e)}") from e
        report.notes.insert(0, f"skipped <model> ({type(model).__name__}): {_first_line(e)}")
    else:
        fused, report = fuse_traced(traced, rules, runs, type(model).__name__)
    report.notes.extend(notes)
    for r in report.refused:
        if r.warn:
            warnings.warn(f"{r.node}: {r.reason}; left unfolded", UserWarning, stacklevel=3)
    if reference is not None:
        verify(reference, fused, example_inputs, rtol)
    return fused, report


def copied(model: nn.Module, leaf_modules=()) -> tuple:
    """A copy of ``model`` (:func:`copy_model`) and, for ``leaf_modules``, their copies in it
    (instances; classes and modules from elsewhere as they are)."""
    memo: dict = {}
    work = copy_model(model, memo)
    return work, [memo.get(id(m), m) for m in leaf_modules]


def unfusable(model: nn.Module) -> str | None:
    """What makes ``model`` one that fuse cannot work on, with what to do instead; else None.
    (Wrappers trace as calls of their wrapped module, which fusing part by part would take
    apart; TorchScript modules have no Python forward; meta tensors have no values.)"""
    wrapped = {torch.jit.ScriptModule: None, nn.DataParallel: "module",
               nn.parallel.DistributedDataParallel: "module"}
    compiled = sys.modules.get("torch._dynamo.eval_frame")  # loaded if the model is compiled
    if compiled is not None and hasattr(compiled, "OptimizedModule"):
        wrapped[compiled.OptimizedModule] = "_orig_mod"
    for cls, inner in wrapped.items():
        if isinstance(model, cls):
            if inner is None:
                return (f"{type(model).__name__} is a TorchScript module, which torch.fx cannot "
                        "trace: fuse the Python model, then script or trace the fused one")
            return (f"{type(model).__name__} wraps the model to fuse: pass model.{inner}, and "
                    "wrap (or compile) the fused model again")
    meta = next((n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                 if t.is_meta), None)
    if meta is not None:
        return (f"the model's tensors are on the meta device (no values; {meta} is one): "
                "load its weights (e.g. model.to_empty(device='cpu') and load_state_dict) "
                "before fusing")
    return None


#: at most this many more passes over a result that keeps augmented assignments
_MORE_PASSES = 3


def fuse_traced(traced: Traced, rules, runs, class_name: str):
    """Type, lift, rewrite and lower one traced module; returns ``(GraphModule, Report)``.

    An augmented assignment that something reads the old tensor after (or an alias of it)
    stays the in-place call it is (see :func:`pure_assignments`); when the rewrite removed
    that read (a dead identity, a folded layer), the result is fused again, so that
    ``fuse(fuse(m))`` is ``fuse(m)``.
    """
    fused, report = _fuse_once(traced, rules, runs, class_name)
    for _ in range(_MORE_PASSES):
        if not any(n.op == "call_function" and n.target in AUGMENTED_OPS
                   for n in fused.graph.nodes):
            break
        again, more = _fuse_once(Traced(fused, fused.graph, rebuilt=False), rules, runs,
                                 class_name)
        if again.code == fused.code:
            break
        fused = again
        report.fired.update(more.fired)
        report.refused, report.kept, report.after = more.refused, more.kept, more.after
        report.notes += [n for n in more.notes if n not in report.notes]
        report.seconds += more.seconds
    return fused, report


def _fuse_once(traced: Traced, rules, runs, class_name: str):
    from ..rewrite import run

    types = propagate(traced, runs)
    effects = analyse(traced, types)
    if pure_assignments(traced.graph, types, effects):  # a += b nothing else sees: a + b
        effects = analyse(traced, types)
    graph = lift(traced, types, effects)
    report = run(graph, rules)
    if types.note:
        report.notes.append("note: " + types.note)
    fused = lower(graph, traced, class_name)
    graph.clear()
    return fused, report


def fuse_parts(model: nn.Module, rules, leaf_modules=(), calls=None):
    """Fuse the largest traceable submodules of ``model`` (modified: it is the caller's copy);
    leave the rest as it is.

    Children are tried in order; one that does not trace is descended into.
    A part is replaced by its GraphModule only where some rule fired. Its types
    come from the inputs it was called with (``calls``: path -> input lists, see
    :func:`reparam.frontends.fx_types.capture_inputs`) or else from the inputs it
    justifies. The report sums the parts' counts, prefixes node names with the
    part's path and notes every skipped module with the tracer's error.
    """
    from ..rewrite import Report

    report, calls = Report(), calls or {}

    def visit(module: nn.Module, prefix: str):
        for name, child in list(module.named_children()):
            path = prefix + name
            if isinstance(child, _CONTAINERS):  # its parent may iterate or index it
                visit(child, path + ".")
                continue
            try:
                # traced on a copy: a failed trace may leave state behind
                traced = trace(*copied(child, leaf_modules), constant_defaults(child))
            except Exception as e:
                report.notes.append(f"skipped {path} ({type(child).__name__}): {_first_line(e)}")
                visit(child, path + ".")
                continue
            fused, part = fuse_traced(traced, rules, calls.get(path), type(child).__name__)
            report.fired.update(part.fired)
            report.before.update(part.before)
            report.after.update(part.after)
            report.seconds += part.seconds
            report.refused += [dataclasses.replace(r, node=f"{path}.{r.node}") for r in part.refused]
            report.kept += [dataclasses.replace(k, node=f"{path}.{k.node}") for k in part.kept]
            report.notes += [f"{path}: {n}" for n in part.notes]
            if part.fired:
                keep_attributes(fused, child)
                setattr(module, name, fused)

    visit(model, "")
    return model, report


#: children fused element by element: an untraceable parent may iterate or index them
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_PLAIN = (bool, int, float, str, type(None))


def constant_defaults(module: nn.Module) -> dict | None:
    """The forward's arguments with a plain default (a flag, a number, a string, None), bound
    to it for tracing the module as a root: ``forward(x, activate=True)`` traces only so.
    torch.fx guards each bound value: a call with another value raises."""
    import inspect

    if isinstance(module, fx.GraphModule):
        return None
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    bound = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
             and isinstance(p.default, _PLAIN) and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                             p.KEYWORD_ONLY)}
    return bound or None


def keep_attributes(fused: nn.Module, original: nn.Module) -> None:
    """Give ``fused`` (a GraphModule replacing ``original``) the plain attributes of
    ``original`` that code around it may read, e.g. the layer indices a detector's forward
    routes tensors by (``m.f``, ``m.i``, ``m.type``)."""
    internal = set(nn.Module().__dict__)
    for key, value in vars(original).items():
        if key not in internal and not hasattr(fused, key) and not isinstance(
                value, (nn.Module, torch.Tensor)):
            setattr(fused, key, value)


def verify(reference: nn.Module, fused: nn.Module, example_inputs, rtol: float | None = None):
    """Raise VerificationError unless ``fused`` matches ``reference`` on ``example_inputs``.

    Each output must satisfy ``max|fused - ref| <= rtol * max|ref|`` (``rtol``
    defaults to :data:`RTOL` for the output's dtype). Returns the worst ratio.
    """
    from torch.utils._pytree import tree_flatten

    from ..errors import VerificationError

    args = as_args(example_inputs)
    with torch.no_grad():  # each model gets its own copy of the inputs: either may change them
        ref, _ = tree_flatten(reference(*copy.deepcopy(args)))
        got, _ = tree_flatten(fused(*copy.deepcopy(args)))
    if len(ref) != len(got):
        raise VerificationError(f"fused model returns {len(got)} outputs, original {len(ref)}")
    worst = 0.0
    for i, (r, g) in enumerate(zip(ref, got)):
        if not isinstance(r, torch.Tensor):
            continue
        if r.shape != g.shape:
            raise VerificationError(f"output {i}: shape {tuple(g.shape)} != {tuple(r.shape)}")
        tol = rtol if rtol is not None else RTOL.get(r.dtype, 1e-4)
        wide = torch.complex128 if r.is_complex() else torch.float64
        scale = r.abs().max().item() if r.numel() else 0.0
        diff = (g.to(wide) - r.to(wide)).abs().max().item() if r.numel() else 0.0
        ratio = diff / scale if scale else diff
        if not ratio <= tol:  # also catches NaN
            raise VerificationError(f"output {i}: max|diff| = {diff:.3g} is {ratio:.3g} of "
                                    f"max|ref| = {scale:.3g}, above the tolerance {tol:g}")
        worst = max(worst, ratio)
    return worst
