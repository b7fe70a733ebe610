"""A deep copy of an ``nn.Module`` tree, made for tracing.

:func:`copy_model` gives what ``copy.deepcopy`` gives - every module, parameter,
buffer and attribute copied, what the original shares shared once in the copy -
at a fraction of its cost: modules are rebuilt from their ``__dict__``, tensors
are cloned, attributes that cannot change (numbers, strings, tuples of them)
are kept, empty hook tables are made anew, sets of strings (the names of
non-persistent buffers) are copied as sets, a class's own ``__setstate__`` gets
the copied state (as from ``copy.deepcopy``), and only the rest goes through
``copy.deepcopy`` (with the same memo).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

_ATOMS = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
#: the exact classes of :data:`_ATOMS`: one set lookup decides most attributes
_ATOM_TYPES = frozenset(_ATOMS)


#: what decides how ``copy.deepcopy`` copies an object: a class that changes one of these
#: is copied by ``copy.deepcopy`` itself. (``__setstate__``, which ``nn.ConvNd`` defines,
#: only receives the copied state: it is called on it here as ``copy.deepcopy`` would.)
_PROTOCOL = ("__deepcopy__", "__reduce_ex__", "__reduce__", "__getstate__")


def _immutable(v) -> bool:
    t = type(v)
    if t in _ATOM_TYPES:
        return True
    return isinstance(v, _ATOMS) or t is tuple and all(isinstance(x, _ATOMS) for x in v)


def _copy_tensor(t: torch.Tensor, memo: dict):
    if id(t) in memo:
        return memo[id(t)]
    if type(t) is nn.Parameter:
        new = nn.Parameter(t.detach().clone(), t.requires_grad)
    elif type(t) is torch.Tensor:
        new = t.detach().clone().requires_grad_(t.requires_grad) if t.is_leaf else \
            t.detach().clone()
    else:  # a tensor subclass: its own copy protocol
        new = copy.deepcopy(t, memo)
    memo[id(t)] = new
    return new


def _copy_value(v, memo: dict):
    if _immutable(v):
        return v
    if isinstance(v, nn.Module):
        return copy_model(v, memo)
    if isinstance(v, torch.Tensor):
        return _copy_tensor(v, memo)
    if type(v) is OrderedDict and not v:
        return OrderedDict()
    if type(v) is set and all(type(x) is str for x in v):  # what copy.deepcopy makes of it
        if id(v) not in memo:
            memo[id(v)] = set(v)
            memo[id(memo)].append(v)
        return memo[id(v)]
    return copy.deepcopy(v, memo)


def copy_model(model: nn.Module, memo: dict | None = None) -> nn.Module:
    """A deep copy of ``model``; ``memo`` maps ``id`` of an original object to its copy
    (as for ``copy.deepcopy``). A module whose class defines its own ``__deepcopy__`` or
    ``__reduce_ex__`` is copied by ``copy.deepcopy``."""
    memo = {} if memo is None else memo
    memo.setdefault(id(memo), []).append(model)  # as copy.deepcopy: originals outlive the memo
    if id(model) in memo:
        return memo[id(model)]
    cls = type(model)
    if any(getattr(cls, k, None) is not getattr(nn.Module, k, None) for k in _PROTOCOL) \
            or hasattr(cls, "__slots__"):
        return copy.deepcopy(model, memo)
    new = cls.__new__(cls)
    memo[id(model)] = new
    state = {}
    for k, v in model.__dict__.items():
        if k == "_compiled_call_impl":  # dropped by nn.Module.__getstate__: not copied
            continue
        if k in ("_parameters", "_buffers", "_modules"):
            state[k] = {name: None if t is None else _copy_value(t, memo) for name, t in v.items()}
        else:
            state[k] = _copy_value(v, memo)
    if getattr(cls, "__setstate__", None) is not getattr(nn.Module, "__setstate__", None):
        new.__setstate__(state)
    else:
        object.__setattr__(new, "__dict__", state)
    return new
