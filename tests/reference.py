"""Independent float64 references for the kernel algebra tests (numpy only, no torch).

Each function implements its layer's textbook definition as literally as
possible, with no tricks shared with ``reparam.kernel``: the tests trust these,
and check the convolution itself against torch once.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from reparam.kernel import Conv


def out_length(length: int, begin: int, end: int, kernel: int, stride: int, dilation: int) -> int:
    """Output length of one spatial dimension (may be <= 0: empty output)."""
    return (length + begin + end - dilation * (kernel - 1) - 1) // stride + 1


def min_length(begin: int, end: int, kernel: int, dilation: int) -> int:
    """Smallest input length giving a non-empty output in one dimension."""
    return max(1, dilation * (kernel - 1) + 1 - begin - end)


def conv_reference(x: np.ndarray, conv: Conv) -> np.ndarray:
    """``y[n, o, i] = bias[o] + sum_{c in group(o), t} w[o, c', t] * xpad[n, c, s*i + d*t]``.

    ``x`` has shape ``(N, C, *spatial)``. One strided slice of the zero-padded
    input per kernel tap, one einsum per group.
    """
    x = np.asarray(x, dtype=np.float64)
    w, nd, g = conv.weight, conv.ndim, conv.groups
    assert x.ndim == nd + 2 and x.shape[1] == conv.in_channels, (x.shape, w.shape, g)
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(conv.pads))
    out = [out_length(L, b, e, k, s, d) for L, (b, e), k, s, d in
           zip(x.shape[2:], conv.pads, conv.kernel_size, conv.stride, conv.dilation)]
    assert min(out) >= 1, f"empty output {out}"
    opg, ipg = conv.out_channels // g, w.shape[1]
    y = np.zeros((x.shape[0], conv.out_channels, *out))
    for t in itertools.product(*(range(k) for k in conv.kernel_size)):
        window = (slice(None), slice(None)) + tuple(
            slice(d * tk, d * tk + s * (n - 1) + 1, s)
            for tk, s, d, n in zip(t, conv.stride, conv.dilation, out))
        xs = xpad[window]
        for j in range(g):
            y[:, j * opg:(j + 1) * opg] += np.einsum(
                "oc,nc...->no...", w[(slice(j * opg, (j + 1) * opg), slice(None)) + t],
                xs[:, j * ipg:(j + 1) * ipg])
    return y + conv.bias.reshape((1, -1) + (1,) * nd)


def bn_reference(x, mean, var, weight, bias, eps):
    """Inference batch norm ``(x - mean) / sqrt(var + eps) * weight + bias`` per channel."""
    shape = (1, -1) + (1,) * (np.ndim(x) - 2)
    r = lambda v: np.asarray(v, dtype=np.float64).reshape(shape)  # noqa: E731
    return (x - r(mean)) / np.sqrt(r(var) + eps) * r(weight) + r(bias)


def avgpool_reference(x, kernel, stride, pads):
    """Average pooling, zero padding counted in the divisor (``count_include_pad=True``).

    Every output is the mean of a full ``kernel`` window of the padded input.
    """
    x = np.asarray(x, dtype=np.float64)
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(tuple(p) for p in pads))
    out = [out_length(L, b, e, k, s, 1)
           for L, (b, e), k, s in zip(x.shape[2:], pads, kernel, stride)]
    y = np.empty(x.shape[:2] + tuple(out))
    for i in itertools.product(*(range(n) for n in out)):
        window = tuple(slice(s * ik, s * ik + k) for ik, s, k in zip(i, stride, kernel))
        y[(Ellipsis,) + i] = xpad[(Ellipsis,) + window].sum(axis=tuple(range(2, x.ndim))) \
            / math.prod(kernel)
    return y


def make_conv(rng: np.random.Generator, in_channels: int, out_channels: int, kernel,
              stride=None, pads=None, dilation=None, groups: int = 1, bias: bool = True) -> Conv:
    """A random conv (normal weights; zero bias when ``bias`` is false)."""
    kernel = tuple(kernel)
    nd = len(kernel)
    assert in_channels % groups == 0 and out_channels % groups == 0
    w = rng.standard_normal((out_channels, in_channels // groups) + kernel)
    b = rng.standard_normal(out_channels) if bias else np.zeros(out_channels)
    return Conv(w, b, tuple(stride or (1,) * nd), tuple(pads or ((0, 0),) * nd),
                tuple(dilation or (1,) * nd), groups)


def snapshot(*convs: Conv):
    """Copies of every conv's arrays and attributes, to check nothing was mutated."""
    return [(c.weight.copy(), c.bias.copy(), c.stride, c.pads, c.dilation, c.groups)
            for c in convs]


def unchanged(before, *convs: Conv) -> bool:
    """True when ``convs`` still equal the ``snapshot`` ``before``."""
    return all(np.array_equal(w, c.weight) and np.array_equal(b, c.bias)
               and (s, p, d, g) == (c.stride, c.pads, c.dilation, c.groups)
               for (w, b, s, p, d, g), c in zip(before, convs, strict=True))
