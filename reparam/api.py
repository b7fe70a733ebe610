"""``reparam.fuse``: the entry point for every kind of model."""
from __future__ import annotations

from .rewrite import Report


def default_rules():
    from .passes import DEFAULT_RULES
    return list(DEFAULT_RULES)


def _is_torch_module(obj) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _is_onnx_model(obj) -> bool:
    import sys
    onnx = sys.modules.get("onnx")  # an onnx.ModelProto exists only once onnx is imported
    return onnx is not None and isinstance(obj, onnx.ModelProto)


def _is_path(obj) -> bool:
    import os
    return isinstance(obj, (str, os.PathLike))


def _fuse_onnx(model, example_inputs, rules, rtol):
    from .frontends.onnx import fuse_model, load
    from .frontends.onnx_check import validate

    if _is_path(model):
        import os
        what = source = os.fspath(model)
        model, _ = load(model)
    else:
        what, source = "model", model
        validate(model, what)  # a malformed proto is named before its example inputs
    feeds = None if example_inputs is None else _onnx_feeds(model, example_inputs)
    blocks: list = []
    fused, rep = fuse_model(model, rules, what=what, validated=True, blocks=blocks)
    for r in rep.refused:
        if r.warn:  # e.g. folded weights that would overflow the model's dtype (as for torch)
            import warnings
            warnings.warn(f"{r.node}: {r.reason}; left unfolded", UserWarning, stacklevel=3)
    if feeds is not None:
        from .check_onnx import verify
        del model  # a file is checked as it is on disk (a large one was loaded light)
        verify(source, fused, feeds, rtol, blocks=blocks)
    return fused, rep


_ONNX_ACCEPTED = ("a numpy array (for a model with one input), a dict of input name -> array, "
                  "or a list of such (one check each)")


def _onnx_feeds(model, example_inputs) -> list[dict]:
    """``example_inputs`` for an ONNX model as a list of feeds ``{input name: array}``.

    Accepted: an array (fed to the model's only input), a dict name -> array, or a
    list or tuple of those (each one check). Names, dtypes and fixed dimensions
    are checked against the model's inputs, so that a mistake is named as such
    rather than as onnxruntime failing to run the model.
    """
    import numpy as np
    from onnx import helper

    from .check_onnx import describe_inputs, input_specs

    specs = {name: (elem, dims) for name, elem, dims in input_specs(model)}
    items = list(example_inputs) if isinstance(example_inputs, (list, tuple)) else [example_inputs]
    if not items:
        raise ValueError(f"example_inputs is empty: pass {_ONNX_ACCEPTED}")

    def array(value):
        return isinstance(value, np.ndarray) or (hasattr(value, "__array__")
                                                 and not isinstance(value, (str, bytes, dict)))

    feeds = []
    for item in items:
        if isinstance(item, dict):
            feed = dict(item)
        elif array(item):
            if len(specs) != 1:
                raise ValueError(f"example_inputs: an array needs a model with one input, this one "
                                 f"has {len(specs)} ({describe_inputs(model)}); pass a dict of "
                                 "input name -> array")
            feed = {next(iter(specs)): item}
        else:
            raise TypeError(f"example_inputs for an ONNX model: {_ONNX_ACCEPTED}; "
                            f"got {type(item).__name__}")
        unknown = [k for k in feed if k not in specs]
        if unknown:
            raise ValueError(f"example_inputs: {unknown[0]!r} is not an input of the model; its "
                             f"inputs: {describe_inputs(model)}")
        missing = [k for k in specs if k not in feed]
        if missing:
            raise ValueError(f"example_inputs: no value for input {missing[0]!r}; the model's "
                             f"inputs: {describe_inputs(model)}")
        for name, value in feed.items():
            if not array(value):
                raise TypeError(f"example_inputs[{name!r}]: expected a numpy array, got "
                                f"{type(value).__name__}")
            value = feed[name] = np.asarray(value)
            elem, dims = specs[name]
            try:
                want = helper.tensor_dtype_to_np_dtype(elem)
            except Exception:
                want = None
            if want is not None and value.dtype != want:
                raise TypeError(f"example_inputs[{name!r}] is {value.dtype}, the model's input is "
                                f"{want}: cast it with .astype(np.{want})")
            if dims and (len(dims) != value.ndim or any(
                    isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, value.shape))):
                raise ValueError(f"example_inputs[{name!r}] has shape [{','.join(map(str, value.shape))}]"
                                 f"; the model declares {describe_inputs(model, name)}")
        feeds.append(feed)
    return feeds


def _torch_args(example_inputs):
    """``example_inputs`` for a torch model as the tuple of the forward's positional arguments."""
    import torch

    if example_inputs is None or isinstance(example_inputs, tuple):
        args = example_inputs
    elif isinstance(example_inputs, list):
        args = tuple(example_inputs)
    elif isinstance(example_inputs, torch.Tensor):
        args = (example_inputs,)
    else:
        numpy = type(example_inputs).__module__ == "numpy"
        hint = " (torch.from_numpy(a) makes it a tensor)" if numpy else ""
        raise TypeError("example_inputs for a torch model: a tensor, or a tuple or list of the "
                        "forward's positional arguments, e.g. x or (x, y); got "
                        f"{'numpy.' * numpy}{type(example_inputs).__name__}{hint}")
    for a in args or ():
        if type(a).__module__ == "numpy":
            raise TypeError(f"example_inputs for a torch model: got a numpy.{type(a).__name__} "
                            "among the arguments; pass tensors (torch.from_numpy(a) makes one)")
    return args


def fuse(model, example_inputs=None, *, report: bool = False, rules=None,
         rtol: float | None = None, leaf_modules=(), concrete_args=None):
    """Fold the linear training-time branches of ``model`` into single convolutions.

    ``model`` is an ONNX model (a path to an ``.onnx`` file, or an
    ``onnx.ModelProto``) or a ``torch.nn.Module``.

    ONNX: the model (read with its external data) is lifted with the ONNX
    frontend, rewritten by ``rules`` and returned as a new ``onnx.ModelProto``;
    the input proto is not modified and nothing is attached to the result.
    ``example_inputs`` (a numpy array for a model with one input, a dict of
    input name -> numpy array, or a list of such, each one check) runs both
    models with onnxruntime and raises
    :class:`reparam.VerificationError` when an output differs by more than
    ``rtol * max|reference|``; example inputs of another kind or dtype raise
    ``TypeError``, a name, shape or count that does not fit the model's inputs
    ``ValueError`` (both naming what the model takes). A file or proto that is
    not a readable ONNX model (such as a PyTorch checkpoint, which the message
    says) raises :class:`reparam.BadInputError`.

    torch: ``model`` is never modified: it is deep-copied,
    traced with torch.fx (in eval mode; a model in training mode is folded with
    its BatchNorm running statistics and a warning says so), rewritten by
    ``rules`` (default: :data:`reparam.passes.DEFAULT_RULES`) and returned as an
    eval-mode ``torch.fx.GraphModule``. Folding runs in float64 and each new
    conv is cast back to its original dtype.

    Tracing: ``leaf_modules`` (module instances or classes) are kept as opaque
    calls; ``concrete_args`` is passed to the tracer (``torch.fx.Tracer.trace``).
    When the whole model does not trace (Python control flow on tensor values,
    unsupported calls), its largest traceable submodules are fused instead and
    a copy of the model holding them is returned; the report's ``notes`` say
    what was skipped and why. A model none of whose parts trace raises
    :class:`reparam.TraceError`.

    With ``example_inputs`` (a tensor, or a tuple or list of the forward's
    positional arguments; anything else raises ``TypeError``) the result is run
    against the original and :class:`reparam.VerificationError` is raised when
    an output differs by more than ``rtol * max|reference|``.

    The :class:`reparam.Report` of what was folded and refused (and why) is
    attached as ``fused.reparam_report``; ``report=True`` also returns it:
    ``fused, rep = fuse(model, report=True)``.
    """
    rules = default_rules() if rules is None else list(rules)
    if _is_path(model) or _is_onnx_model(model):
        fused, rep = _fuse_onnx(model, example_inputs, rules, rtol)
    elif _is_torch_module(model):
        from .frontends.fx import fuse_module
        args = _torch_args(example_inputs)
        fused, rep = fuse_module(model, rules, args, rtol, leaf_modules, concrete_args)
        fused.reparam_report = rep
    else:
        raise TypeError("reparam.fuse expects an ONNX model (path or onnx.ModelProto) or a "
                        f"torch.nn.Module, got {type(model).__name__}")
    return (fused, rep) if report else fused


__all__ = ["Report", "fuse", "default_rules"]
