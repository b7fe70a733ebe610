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


def fuse(model, example_inputs=None, *, report: bool = False, rules=None,
         rtol: float | None = None):
    """Fold the linear training-time branches of ``model`` into single convolutions.

    ``model`` is a ``torch.nn.Module``. It is never modified: it is deep-copied,
    traced with torch.fx (in eval mode; a model in training mode is folded with
    its BatchNorm running statistics and a warning says so), rewritten by
    ``rules`` (default: :data:`reparam.passes.DEFAULT_RULES`) and returned as an
    eval-mode ``torch.fx.GraphModule``. Folding runs in float64 and each new
    conv is cast back to its original dtype.

    With ``example_inputs`` (a tensor or tuple of tensors) the result is run
    against the original and :class:`reparam.VerificationError` is raised when
    an output differs by more than ``rtol * max|reference|``.

    The :class:`reparam.Report` of what was folded and refused (and why) is
    attached as ``fused.reparam_report``; ``report=True`` also returns it:
    ``fused, rep = fuse(model, report=True)``.
    """
    rules = default_rules() if rules is None else list(rules)
    if _is_torch_module(model):
        from .frontends.fx import fuse_module
        fused, rep = fuse_module(model, rules, example_inputs, rtol)
        fused.reparam_report = rep
    else:
        raise TypeError(f"reparam.fuse expects a torch.nn.Module, got {type(model).__name__}")
    return (fused, rep) if report else fused


__all__ = ["Report", "fuse", "default_rules"]
