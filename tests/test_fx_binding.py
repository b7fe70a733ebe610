"""The fx frontend binds calls to signatures itself (:func:`bind_arguments`, for speed): it must
give exactly what ``inspect.Signature.bind`` and ``apply_defaults`` give, and refuse exactly
the calls they refuse, for every signature the lifter and the effects analysis bind to."""
import inspect

import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from reparam.frontends.fx_effects import bind_arguments, signature

SIGNATURES = [signature(F.batch_norm), signature(torch.batch_norm), signature(F.dropout),
              signature(F.instance_norm), signature(F.pad),
              # the lifter's own, written as it writes them
              inspect.signature(lambda input, weight, bias=None, stride=1, padding=0: None),
              inspect.signature(lambda input, other, *, alpha=1, out=None: None),
              # what it hands to inspect: positional-only and variadic parameters
              inspect.signature(lambda a, b=1, *c, d, **e: None),
              inspect.signature(lambda a, /, b, *, c=2: None)]
NAMES = ["input", "other", "alpha", "out", "weight", "bias", "training", "inplace", "p",
         "eps", "running_mean", "a", "b", "c", "d", "unknown"]


def inspect_bind(sig, args, kwargs):
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


@given(st.sampled_from(SIGNATURES), st.integers(0, 10),
       st.lists(st.sampled_from(NAMES), max_size=5, unique=True))
def test_bind_arguments_is_inspects_binding(sig, n_args, keywords):
    args = tuple(range(n_args))
    kwargs = {k: 100 + i for i, k in enumerate(keywords)}
    want = inspect_bind(sig, args, kwargs)
    got = bind_arguments(sig, args, kwargs)
    assert got == want
    assert want is None or list(got) == list(want)  # in the signature's order
