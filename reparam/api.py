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

    if _is_path(model):
        import os
        what = source = os.fspath(model)
        model, _ = load(model)
    else:
        what, source = "model", model
    fused, rep = fuse_model(model, rules, what=what, validated=what != "model")
    for r in rep.refused:
        if r.warn:  # e.g. folded weights that would overflow the model's dtype (as for torch)
            import warnings
            warnings.warn(f"{r.node}: {r.reason}; left unfolded", UserWarning, stacklevel=3)
    if example_inputs is not None:
        from .check_onnx import verify
        feeds = example_inputs if isinstance(example_inputs, (list, tuple)) else [example_inputs]
        del model  # a file is checked as it is on disk (a large one was loaded light)
        verify(source, fused, list(feeds), rtol)
    return fused, rep


def fuse(model, example_inputs=None, *, report: bool = False, rules=None,
         rtol: float | None = None, leaf_modules=(), concrete_args=None):
    """Fold the linear training-time branches of ``model`` into single convolutions.

    ``model`` is an ONNX model (a path to an ``.onnx`` file, or an
    ``onnx.ModelProto``) or a ``torch.nn.Module``.

    ONNX: the model (read with its external data) is lifted with the ONNX
    frontend, rewritten by ``rules`` and returned as a new ``onnx.ModelProto``;
    the input proto is not modified and nothing is attached to the result.
    ``example_inputs`` (a dict of input name -> numpy array, or a list of such
    dicts) runs both models with onnxruntime and raises
    :class:`reparam.VerificationError` when an output differs by more than
    ``rtol * max|reference|``. A file or proto that is not a readable ONNX
    model raises :class:`reparam.BadInputError`.

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

    With ``example_inputs`` (a tensor or tuple of tensors) the result is run
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
        fused, rep = fuse_module(model, rules, example_inputs, rtol, leaf_modules, concrete_args)
        fused.reparam_report = rep
    else:
        raise TypeError("reparam.fuse expects an ONNX model (path or onnx.ModelProto) or a "
                        f"torch.nn.Module, got {type(model).__name__}")
    return (fused, rep) if report else fused


__all__ = ["Report", "fuse", "default_rules"]
