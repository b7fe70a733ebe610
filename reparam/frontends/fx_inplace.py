"""Augmented assignments (``a += b``) in torch.fx graphs.

torch.fx's Proxy has no in-place operators, so Python runs ``a += b`` on a traced
value as ``a = a + b``: a tensor that aliases ``a`` (a view taken before) is then
traced as unchanged, while the forward changes it, and the traced graph computes
something else. :class:`InplaceProxy` (the proxy of reparam's tracer) traces
``a += b``, ``a -= b``, ``a *= b``, ... as the in-place operator calls they are
(``operator.iadd(a, b)``), which the effects analysis
(:mod:`reparam.frontends.fx_effects`) knows change ``a``.

Most such assignments change a tensor nothing else can see (``out = bn(conv(x));
out += shortcut``): :func:`pure_assignments` turns those back into ``a + b``, so
that they fold as sums do.
"""
from __future__ import annotations

import operator

import torch
from torch import fx

#: the augmented-assignment operators, by the name of their special method
_AUGMENTED = {name: getattr(operator, name) for name in (
    "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul", "iand", "ior",
    "ixor", "ilshift", "irshift")}

#: the in-place operators :func:`pure_assignments` may replace, and their pure forms
_PURE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
         operator.itruediv: operator.truediv}


class InplaceProxy(fx.Proxy):
    """A Proxy whose augmented assignments are traced as in-place operator calls."""


def _augmented(op):
    def method(self, other):
        return self.tracer.create_proxy("call_function", op, (self, other), {})
    method.__name__ = f"__{op.__name__}__"
    return method


for _name, _op in _AUGMENTED.items():
    setattr(InplaceProxy, f"__{_name}__", _augmented(_op))

#: the in-place operators that augmented assignments are traced as
AUGMENTED_OPS = frozenset(_AUGMENTED.values())


def pure_assignments(graph: fx.Graph, types, effects) -> int:
    """Replace ``operator.iadd(a, b)`` (``isub``, ``imul``, ``itruediv``) by ``a + b`` (...)
    where nothing can tell the two apart; returns how many were replaced.

    That holds when ``a`` is a floating-point tensor the graph computes (it may alias
    other values the graph computes, as an Identity's output does, but no input, parameter
    or buffer), nothing reads ``a`` or anything that may alias it after the assignment
    (nor changes them in place, which reads them), and ``a op b`` has ``a``'s dtype and shape (``types``, ``effects``: see
    :mod:`reparam.frontends.fx_types` and :func:`reparam.frontends.fx_effects.analyse`).
    """
    nodes = list(graph.nodes)
    position = {n: k for k, n in enumerate(nodes)}
    replaced = 0
    for n in nodes:
        if n.op != "call_function" or n.target not in _PURE or len(n.args) != 2 or n.kwargs:
            continue
        a, b = n.args
        if _invisible(a, b, n, position, types, effects):
            n.target = _PURE[n.target]
            effects.aliases[n], effects.mutates[n] = [], []  # a fresh value, as a + b is
            replaced += 1  # (so that out += c1(x); out += c2(x) sums as a chain of Adds)
    return replaced


def _invisible(a, b, n, position, types, effects) -> bool:
    """Whether changing ``a`` in place at ``n`` is invisible (see :func:`pure_assignments`)."""
    if not isinstance(a, fx.Node) or not _same_type(a, b, n, types):
        return False
    shared, stack = set(), [a]  # a, and what it may alias (an Identity's input, a view's base)
    while stack:
        m = stack.pop()
        if m not in shared:
            if m.op not in _CALLS or m not in effects.aliases:
                return False  # an input, parameter or buffer, or of unknown effects
            shared.add(m)
            stack.extend(effects.aliases[m])
    stack = list(shared)  # ... and what may alias those (their users that alias them)
    while stack:
        s = stack.pop()
        for m in s.users:
            if m is n:
                continue
            # (a change in place before n is seen by a + b as by a += b; one after n reads them)
            if position[m] > position[n]:
                return False  # read after the assignment: it would see the old value
            if m not in shared and s in effects.aliases.get(m, ()):
                shared.add(m)
                stack.append(m)
    return True


_CALLS = ("call_module", "call_function", "call_method")


def _same_type(a, b, n, types) -> bool:
    """``a op b`` has the type of ``a`` (which the in-place result ``n`` keeps)."""
    ta, tn = types.get(a), types.get(n)
    if ta is None or ta != tn or ta.shape is None or not getattr(torch, ta.dtype).is_floating_point:
        return False
    if isinstance(b, (int, float, bool)):
        return True
    tb = types.get(b) if isinstance(b, fx.Node) else None
    if tb is None or tb.shape is None or len(tb.shape) > len(ta.shape):
        return False
    dtype = getattr(torch, ta.dtype)
    if torch.promote_types(dtype, getattr(torch, tb.dtype)) != dtype:
        return False
    return all(db == 1 or (isinstance(db, int) and db == da)
               for da, db in zip(ta.shape[::-1], tb.shape[::-1]))
