"""Kernel algebra: exact re-parameterization of linear layers as convolutions.

Pure numpy, float64 (a :class:`Conv` may hold a float32 or float16 weight as it is
given; every operation computes with it in float64); imports neither torch nor onnx. Every layer that a rewrite
folds is first written as a :class:`Conv` in canonical form::

    y[n, o, i] = bias[o] + sum_{c in group(o), t} weight[o, c', t] * xpad[n, c, s*i + d*t]

where ``xpad`` is the input zero-padded by ``pads[k] = (begin, end)`` in every
spatial dimension ``k``, ``s`` the stride, ``d`` the dilation and ``c'`` the index
of input channel ``c`` inside its group. With no spatial dimensions (``ndim`` 0,
weight ``(out, in/groups)``) a conv is a linear layer on ``(N, C)``:
``y[n, o] = bias[o] + sum_c weight[o, c'] * x[n, c]``. Operations build such convs
(:func:`from_bn`, :func:`identity`, :func:`avgpool`) or combine them
(:func:`pad`, :func:`add`, :func:`compose`). Each one states when it is exact;
when that condition does not hold it returns a :class:`Refusal` with the reason
instead of an approximate conv. No operation mutates its arguments.

Notation used in the docstrings: for one spatial dimension a conv reads the
input offsets ``-begin + d*t`` (``t = 0..k-1``) around ``s*i``; its *reach*
``n = begin + end - d*(k-1)`` fixes the output length ``floor((L + n - 1)/s) + 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np

__all__ = [
    "Conv", "Refusal", "KINDS", "from_bn", "identity", "avgpool", "pad", "pad_to",
    "add", "compose", "composed_shape", "scale_channels", "regroup", "undilate",
    "ConvTranspose", "scale_outputs", "scale", "NARROW",
]


#: machine-readable kinds of :class:`Refusal` (``Refusal.kind``), by what stops the fold
KINDS = {
    "misaligned": "branch outputs line up only for some input sizes, or a kernel cannot be centred",
    "stride": "branches have different strides",
    "channels": "channel counts do not match",
    "rank": "different or unsupported numbers of spatial dimensions",
    "padding": "a zero padding would see values that are not zeros",
    "pool": "an average pool whose divisor changes at the borders",
    "cost": "the folded layer would cost more multiply-adds or parameters",
    "shared": "an intermediate output is also read elsewhere",
    "nonlinear": "a branch passes through a non-linear op",
    "stats": "BatchNorm statistics missing, not finite or not positive",
    "padding-mode": "a padding mode other than zeros",
    "overflow": "folded weights would overflow the model's dtype",
    "effects": "an in-place op or other side effect changes a tensor the fold reads",
    "dtype": "the op's dtype is not a real floating-point type, or types differ",
    "type": "the rank, shape or dtype of a tensor is unknown",
    # why a frontend keeps a layer opaque, and why a layer nothing refused stays
    "hooks": "a module with hooks, which may change what it computes",
    "parametrized": "a module whose weights a parametrization computes",
    "subclass": "a subclass of a known layer class (or a replaced forward) may compute anything",
    "training": "a BatchNorm in training mode normalises with batch statistics",
    "arguments": "a call with arguments the lifter does not check",
    "unsupported": "an op the lifter does not lift",
    "final": "a conv with nothing linear before, after or beside it to fold with",
    "alone": "a BatchNorm with no conv or parallel branch to fold into",
}


@dataclass(frozen=True)
class Refusal:
    """Why an operation would not be exact (or safe); returned instead of a result.

    ``kind`` is one of :data:`KINDS` (machine-readable), ``reason`` the message
    for people; ``warn``: the caller should also warn the user (e.g. a value
    would overflow).
    """

    kind: str
    reason: str
    warn: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown refusal kind {self.kind!r}")

    def __bool__(self) -> bool:  # a refusal is never a usable result
        return False


#: weight dtypes a :class:`Conv` keeps as they are (float64 holds each of their values exactly)
NARROW = (np.dtype(np.float32), np.dtype(np.float16))


def _wide(conv: "Conv") -> "Conv":
    """``conv`` with a float64 weight (a copy when it holds a :data:`NARROW` one)."""
    if conv.weight.dtype == np.float64:
        return conv
    return conv.replace(weight=conv.weight.astype(np.float64))


@dataclass(frozen=True, eq=False)
class Conv:
    """A convolution in canonical form (see module docstring).

    ``weight`` has shape ``(out, in/groups, *kernel)``; ``bias`` shape ``(out,)``;
    ``stride``, ``dilation`` and ``pads`` have one entry per spatial dimension,
    ``pads[k] = (begin, end)`` zero padding.

    ``bias`` is float64; ``weight`` too, except that a float32 or float16 array is kept as
    it is given (:data:`NARROW`: e.g. a read-only view of a model file's pages, which
    a float64 copy of every weight of a large model would double): every operation
    here computes with it in float64 (converting float32 or float16 to float64 is
    exact), so its results are the same, bit for bit, as with a float64 copy.
    """

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int = 1

    def __post_init__(self):
        w = self.weight
        if not (isinstance(w, np.ndarray) and w.dtype in NARROW):
            w = np.asarray(w, dtype=np.float64)
        b = np.asarray(self.bias, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        nd = w.ndim - 2
        if nd < 0:
            raise ValueError(f"conv weight needs at least 2 dims, got shape {w.shape}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias shape {b.shape} does not match {w.shape[0]} output channels")
        for name in ("stride", "dilation"):
            v = tuple(int(x) for x in getattr(self, name))
            if len(v) != nd or min(v, default=1) < 1:
                raise ValueError(f"{name} {v} invalid for a {nd}-d conv")
            object.__setattr__(self, name, v)
        pads = tuple((int(a), int(b_)) for a, b_ in self.pads)
        if len(pads) != nd or min((min(p) for p in pads), default=0) < 0:
            raise ValueError(f"pads {pads} invalid for a {nd}-d conv")
        object.__setattr__(self, "pads", pads)
        if self.groups < 1 or w.shape[0] % self.groups:
            raise ValueError(f"{w.shape[0]} output channels not divisible by groups={self.groups}")

    # --- derived properties -------------------------------------------------
    @property
    def ndim(self) -> int:
        return self.weight.ndim - 2

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def reach(self) -> tuple[int, ...]:
        """Per dimension ``begin + end - d*(k-1)``: equal reach and stride, equal output length."""
        return tuple(b + e - d * (k - 1)
                     for (b, e), d, k in zip(self.pads, self.dilation, self.kernel_size))

    @property
    def macs_per_pixel(self) -> int:
        """Multiply-adds per output position (all output channels)."""
        return int(np.prod(self.weight.shape))

    @property
    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    def replace(self, **changes) -> "Conv":
        fields = dict(weight=self.weight, bias=self.bias, stride=self.stride,
                      pads=self.pads, dilation=self.dilation, groups=self.groups)
        fields.update(changes)
        return Conv(**fields)


def _pointwise(ndim: int):
    return dict(stride=(1,) * ndim, pads=((0, 0),) * ndim, dilation=(1,) * ndim)


def from_bn(mean, var, weight, bias, eps: float, ndim: int = 2) -> Conv:
    """BatchNorm with inference statistics as a depthwise 1x..x1 conv.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` is, per channel,
    ``y = a*x + b`` with ``a = weight/sqrt(var+eps)`` and ``b = bias - mean*a``.
    Exact for any input (it is the same affine map; only rounding differs).
    The caller must check that the statistics are finite and ``var + eps > 0``.
    """
    mean, var, weight, bias = (np.asarray(v, dtype=np.float64).reshape(-1)
                               for v in (mean, var, weight, bias))
    a = weight / np.sqrt(var + eps)
    c = a.size
    return Conv(a.reshape((c, 1) + (1,) * ndim), bias - mean * a, groups=c, **_pointwise(ndim))


def scale_channels(scale, shift, ndim: int = 2) -> Conv:
    """Per-channel affine ``y = scale*x + shift`` as a depthwise 1x..x1 conv. Always exact."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    shift = np.broadcast_to(np.asarray(shift, dtype=np.float64), scale.shape)
    c = scale.size
    return Conv(scale.reshape((c, 1) + (1,) * ndim), shift.copy(), groups=c, **_pointwise(ndim))


def identity(channels: int, groups: int | None = None, ndim: int = 2) -> Conv:
    """``y = x`` as a 1x..x1 conv with ``groups`` groups (default depthwise).

    Output channel ``o`` takes input channel ``o``, which is position
    ``o mod (channels/groups)`` inside its group. Exact for any input.
    """
    groups = channels if groups is None else groups
    if channels % groups:
        raise ValueError(f"{channels} channels not divisible by groups={groups}")
    per = channels // groups
    w = np.zeros((channels, per) + (1,) * ndim)
    w[(np.arange(channels), np.arange(channels) % per) + (0,) * ndim] = 1.0
    return Conv(w, np.zeros(channels), groups=groups, **_pointwise(ndim))


def avgpool(channels: int, kernel, stride=None, pads=None, count_include_pad: bool = True,
            ceil_mode: bool = False) -> Conv | Refusal:
    """Average pooling as a depthwise conv with every weight ``1/prod(kernel)``.

    Exact when no window is normalised by anything but ``prod(kernel)``: that is
    when padding counts towards the divisor (``count_include_pad``) or there is
    no padding, and windows never run past the padded input (no ``ceil_mode``).
    """
    kernel = tuple(int(k) for k in kernel)
    nd = len(kernel)
    stride = kernel if stride is None else tuple(int(s) for s in stride)
    pads = ((0, 0),) * nd if pads is None else tuple(tuple(p) for p in pads)
    if ceil_mode:
        return Refusal("pool", "average pool with ceil_mode has partial windows with a smaller divisor")
    if not count_include_pad and any(a or b for a, b in pads):
        return Refusal("pool", "average pool excludes padding from its divisor (count_include_pad=0), "
                               "so border windows are not a fixed kernel")
    w = np.full((channels, 1) + kernel, 1.0 / math.prod(kernel))
    return Conv(w, np.zeros(channels), stride, pads, (1,) * nd, groups=channels)


def scale(conv: Conv, c: float) -> Conv:
    """``c * conv(x)``: weights and bias times ``c``, in float64. Always exact (up to rounding)."""
    return conv.replace(weight=np.multiply(conv.weight, c, dtype=np.float64), bias=c * conv.bias)


def pad(conv: Conv, extra: tuple[tuple[int, int], ...]) -> Conv:
    """Grow the kernel by ``extra[k] = (before, after)`` zero taps, padding the input as much more.

    Each added tap reads one more padded input position and multiplies it by 0,
    so outputs and output length (the reach) are unchanged: always exact.
    """
    ks = conv.kernel_size
    w = np.zeros(conv.weight.shape[:2] + tuple(k + b + e for k, (b, e) in zip(ks, extra)))
    w[(slice(None), slice(None)) + tuple(slice(b, b + k) for k, (b, _) in zip(ks, extra))] = conv.weight
    pads = tuple((b + d * eb, e + d * ee)
                 for (b, e), (eb, ee), d in zip(conv.pads, extra, conv.dilation))
    return conv.replace(weight=w, pads=pads)


def pad_to(conv: Conv, kernel_size: tuple[int, ...]) -> Conv | Refusal:
    """Zero-pad the kernel to ``kernel_size`` keeping its centre (see :func:`pad`).

    Exact; refused when a dimension would need an odd number of added taps,
    which cannot keep the centre.
    """
    extra = []
    for k, K in zip(conv.kernel_size, kernel_size):
        if K < k or (K - k) % 2:
            return Refusal("misaligned", f"cannot centre a size-{k} kernel in size {K}")
        extra.append(((K - k) // 2, (K - k) // 2))
    return pad(conv, tuple(extra))


def undilate(conv: Conv, dilation: tuple[int, ...]) -> Conv:
    """Rewrite ``conv`` with a smaller dilation that divides its own, inserting zero taps.

    A tap ``t`` at dilation ``d`` sits at offset ``d*t = D*(t*d/D)``: the same
    offsets on a finer grid, the new taps multiply by 0. Always exact.
    """
    if tuple(conv.dilation) == tuple(dilation):
        return conv
    k_old = conv.kernel_size
    ratio = [d // D for d, D in zip(conv.dilation, dilation)]
    if any(d % D for d, D in zip(conv.dilation, dilation)):
        raise ValueError(f"dilation {dilation} does not divide {conv.dilation}")
    shape = conv.weight.shape[:2] + tuple((k - 1) * r + 1 for k, r in zip(k_old, ratio))
    w = np.zeros(shape)
    w[(slice(None), slice(None)) + tuple(slice(None, None, r) for r in ratio)] = conv.weight
    return conv.replace(weight=w, dilation=tuple(dilation))


def regroup(conv: Conv, groups: int) -> Conv:
    """Rewrite ``conv`` with fewer groups, ``groups`` dividing ``conv.groups``.

    The weight is scattered into a block-diagonal one with zeros between the
    old groups: output channel ``o`` still reads exactly its old inputs. Always exact.
    """
    g = conv.groups
    if g == groups:
        return conv
    if g % groups:
        raise ValueError(f"groups={groups} does not divide {g}")
    O, ipg = conv.weight.shape[:2]
    opg = O // g
    new_ipg = conv.in_channels // groups
    w = np.zeros((O, new_ipg) + conv.kernel_size)
    for j in range(g):  # old group j lands at this column offset within its new group
        col = (j % (g // groups)) * ipg
        w[j * opg:(j + 1) * opg, col:col + ipg] = conv.weight[j * opg:(j + 1) * opg]
    return conv.replace(weight=w, groups=groups)


def _squash_trivial_dilation(conv: Conv, dilation) -> Conv:
    """Dilation of a size-1 kernel dimension has no effect: set it to ``dilation``."""
    dil = tuple(D if k == 1 else d for d, D, k in zip(conv.dilation, dilation, conv.kernel_size))
    return conv.replace(dilation=dil)


def add(*convs: Conv) -> Conv | Refusal:
    """One conv equal to the sum of ``convs`` applied to the same input.

    Kernels are brought to a common dilation (the gcd, inserting zero taps), to
    a common number of groups (the gcd, block-diagonal expansion), and placed
    on one grid of input offsets from ``-max(begin)`` on; weights and biases add.
    Exact when all convs share in/out channels and stride and have equal
    *reach* in every dimension (then their outputs have the same length for
    every input length and line up position by position). Refused otherwise:
    branches whose outputs line up only for some input sizes are not folded.
    """
    if not convs:
        raise ValueError("add needs at least one conv")
    first = convs[0]
    for c in convs[1:]:
        if c.ndim != first.ndim:
            return Refusal("rank", "branches have different numbers of spatial dimensions")
        if (c.in_channels, c.out_channels) != (first.in_channels, first.out_channels):
            return Refusal("channels", f"branches map {c.in_channels}->{c.out_channels} and "
                                       f"{first.in_channels}->{first.out_channels} channels")
        if c.stride != first.stride:
            return Refusal("stride", f"branches have different strides {first.stride} and {c.stride}")
        if c.reach != first.reach:
            return Refusal("misaligned", f"misaligned branch padding: pads {first.pads} with "
                                         f"kernel {first.kernel_size} and pads {c.pads} with kernel "
                                         f"{c.kernel_size} produce equal output sizes only for "
                                         "some inputs")
    nd = first.ndim
    begin = [max(c.pads[k][0] for c in convs) for k in range(nd)]
    # one grid of input offsets holding every tap of every branch: step = gcd of
    # the dilations (where the kernel is >1) and of the shifts between branches
    grid = tuple(reduce(math.gcd, [c.dilation[k] for c in convs if c.kernel_size[k] > 1]
                        + [begin[k] - c.pads[k][0] for c in convs]) or 1 for k in range(nd))
    groups = reduce(math.gcd, (c.groups for c in convs))
    convs = [regroup(undilate(_squash_trivial_dilation(c, grid), grid), groups) for c in convs]
    shift = [[(begin[k] - c.pads[k][0]) // grid[k] for k in range(nd)] for c in convs]
    size = [max(s[k] + c.kernel_size[k] for s, c in zip(shift, convs)) for k in range(nd)]
    # each kernel, zero-padded to ``size`` at its shift (see :func:`pad`), summed in place
    weight = np.zeros(convs[0].weight.shape[:2] + tuple(size))
    for c, s in zip(convs, shift):
        taps = tuple(slice(s[k], s[k] + c.kernel_size[k]) for k in range(nd))
        weight[(slice(None), slice(None)) + taps] += c.weight
    c, s = convs[0], shift[0]
    pads = tuple((b + d * s[k], e + d * (size[k] - s[k] - c.kernel_size[k]))
                 for k, ((b, e), d) in enumerate(zip(c.pads, c.dilation)))
    return c.replace(weight=weight, bias=sum(c.bias for c in convs), pads=pads)


def compose(first: Conv, second: Conv) -> Conv | Refusal:
    """One conv equal to ``second(first(x))``.

    With ``s1, d1, k1`` of ``first`` and ``s2, d2, k2`` of ``second``, the
    result reads input offsets ``d1*t1 + s1*d2*t2``, has stride ``s1*s2``,
    groups ``gcd(g1, g2)`` and bias ``second(first.bias)``; its padding is
    ``first``'s plus ``s1`` times ``second``'s.

    Exact when ``second`` has no padding (every position it reads is a real
    output of ``first``). When ``second`` pads, the intermediate's padded
    positions are zeros, while the composed conv would see ``first`` applied to
    padding there; the two agree only when ``first`` is pointwise (kernel 1,
    no padding) and has zero bias. Otherwise refused: the intermediate's bias
    would leak through ``second``'s zero padding.
    """
    if first.out_channels != second.in_channels:
        return Refusal("channels", f"channel mismatch: {first.out_channels} feeds {second.in_channels}")
    if first.ndim != second.ndim:
        return Refusal("rank", "convs have different numbers of spatial dimensions")
    second_pads = any(a or b for a, b in second.pads)
    if second_pads:
        pointwise = all(k == 1 for k in first.kernel_size) and not any(
            a or b for a, b in first.pads)
        if not pointwise:
            return Refusal("padding", "second conv's zero padding would see the first conv's "
                                      "border outputs, not zeros")
        if np.any(first.bias != 0):
            return Refusal("padding", "first conv's bias would leak through the second conv's zero padding")
    nd = first.ndim
    if _is_channel_scale(second):  # the common conv -> BN case: scale output channels
        a = second.weight.reshape(-1).astype(np.float64)
        shape = (-1,) + (1,) * (first.weight.ndim - 1)
        return first.replace(weight=np.multiply(first.weight, a.reshape(shape), dtype=np.float64),
                             bias=first.bias * a + second.bias)
    grid, step2, size, groups = _composed_grid(first, second)
    s1, d1 = first.stride, first.dilation
    a, b = _wide(first), _wide(second)
    if a.groups != groups and b.groups != groups:  # neither is the coarser: expand first
        a = regroup(a, groups)
    k1, k2 = a.kernel_size, b.kernel_size
    O, ipg = b.out_channels, a.in_channels // groups
    product = _grouped_product(a, b, groups)
    w = np.zeros((O, ipg) + size)
    # second's tap t2 and first's tap t1 land at (s1*d2*t2 + d1*t1) / grid: for one t2,
    # first's taps form a strided block of the composed kernel
    step1 = tuple(d1[k] // grid[k] if k1[k] > 1 else 1 for k in range(nd))
    for t2 in np.ndindex(*k2):
        start = [step2[k] * t2[k] // grid[k] for k in range(nd)]
        block = tuple(slice(start[k], start[k] + step1[k] * (k1[k] - 1) + 1, step1[k])
                      for k in range(nd))
        w[(slice(None), slice(None)) + block] += product(b.weight[(slice(None), slice(None)) + t2])
    bias = b.bias + _apply_to_constant(b, a.bias)
    pads = tuple((p1b + s * p2b, p1e + s * p2e)
                 for (p1b, p1e), (p2b, p2e), s in zip(a.pads, b.pads, s1))
    return Conv(w, bias, tuple(x * y for x, y in zip(s1, second.stride)), pads, grid, groups)


def _grouped_product(a: Conv, b: Conv, groups: int):
    """``B -> (B @ A)``: one tap ``B`` (shape ``(O, M/g2)``) of ``b`` times every tap of ``a``.

    Returns the ``(O, I/groups, *k1)`` kernel of ``b``'s tap after ``a`` with
    ``groups`` groups, as :func:`regroup` would lay it out, but multiplying only
    the blocks that are not zero: batched over ``b``'s groups when ``a`` has
    ``groups`` groups, over ``a``'s groups when ``b`` has (one of them must).
    """
    O, M, k1 = b.out_channels, a.out_channels, a.kernel_size
    g1, g2 = a.groups, b.groups
    A = a.weight.reshape(M, -1)  # (M, ipg1 * prod(k1))
    if g1 == groups:  # output group j of b reads intermediate block j, all of one a-group
        A2 = A.reshape(g2, M // g2, -1)
        return lambda B: np.matmul(B.reshape(g2, O // g2, M // g2), A2).reshape(
            (O, a.weight.shape[1]) + k1)
    assert g2 == groups, (g1, g2, groups)
    h, ipg1 = g1 // groups, a.weight.shape[1]
    A4 = A.reshape(groups, h, M // g1, -1)  # (G, h, mpg1, ipg1 * prod(k1))
    perm = (0, 2, 1, 3) + tuple(range(4, 4 + len(k1)))

    def product(B):  # a-group (G, j) reads columns j*ipg1.. of its output group G
        Bh = B.reshape(groups, O // groups, h, M // g1).transpose(0, 2, 1, 3)
        r = np.matmul(Bh, A4).reshape((groups, h, O // groups, ipg1) + k1)
        return r.transpose(perm).reshape((O, h * ipg1) + k1)
    return product


def _composed_grid(first: Conv, second: Conv):
    """Geometry of ``compose(first, second)``: tap grid step, second's tap step, kernel size, groups.

    Taps of ``first`` sit at ``d1*t1``, those of ``second`` at ``s1*d2*t2``; the
    result's dilation is the gcd of the two steps (over dimensions where the
    kernel is larger than 1).
    """
    nd, s1, d1 = first.ndim, first.stride, first.dilation
    step2 = tuple(s * d for s, d in zip(s1, second.dilation))
    grid = tuple(math.gcd(d1[k] if first.kernel_size[k] > 1 else 0,
                          step2[k] if second.kernel_size[k] > 1 else 0) or 1 for k in range(nd))
    k1, k2 = first.kernel_size, second.kernel_size
    size = tuple((d1[k] * (k1[k] - 1) + step2[k] * (k2[k] - 1)) // grid[k] + 1 for k in range(nd))
    return grid, step2, size, math.gcd(first.groups, second.groups)


def composed_shape(first: Conv, second: Conv) -> tuple[int, ...]:
    """Weight shape that :func:`compose` would produce (to price a fold before computing it)."""
    _, _, size, groups = _composed_grid(first, second)
    if _is_channel_scale(second):
        return first.weight.shape
    return (second.out_channels, first.in_channels // groups) + size


def _is_channel_scale(conv: Conv) -> bool:
    """A depthwise 1x..x1 conv with stride 1 and no padding: ``y[c] = w[c] x[c] + b[c]``."""
    return (conv.groups == conv.out_channels == conv.in_channels
            and all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride)
            and not any(a or b for a, b in conv.pads))


def _apply_to_constant(conv: Conv, value: np.ndarray) -> np.ndarray:
    """Weights of ``conv`` applied (no bias) to a spatially constant input ``value`` per channel."""
    taps = conv.weight.sum(axis=tuple(range(2, conv.weight.ndim)), dtype=np.float64)  # (O, ipg)
    opg = conv.out_channels // conv.groups
    ipg = conv.weight.shape[1]
    out = np.empty(conv.out_channels)
    for j in range(conv.groups):
        out[j * opg:(j + 1) * opg] = taps[j * opg:(j + 1) * opg] @ value[j * ipg:(j + 1) * ipg]
    return out


@dataclass(frozen=True, eq=False)
class ConvTranspose:
    """A transposed convolution (the gradient of a conv with these parameters).

    ``weight`` has shape ``(in, out/groups, *kernel)`` (torch's and ONNX's layout),
    ``bias`` shape ``(out,)``; ``stride``, ``dilation``, ``output_padding`` one entry per
    spatial dimension, ``pads[k] = (begin, end)`` the padding removed from the output.
    Output channel ``o`` of group ``g`` is ``bias[o] + sum`` over the group's inputs ``i``
    of ``weight[i, o - g*out/groups]`` scattered at the strided positions: linear in the
    weights of each output channel.
    """

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    groups: int = 1

    def __post_init__(self):
        w = np.asarray(self.weight, dtype=np.float64)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", np.asarray(self.bias, dtype=np.float64).reshape(-1))
        nd = w.ndim - 2
        if nd < 1 or self.groups < 1 or w.shape[0] % self.groups:
            raise ValueError(f"invalid transposed conv weight {w.shape} with groups={self.groups}")
        if self.bias.shape != (w.shape[1] * self.groups,):
            raise ValueError(f"bias shape {self.bias.shape} does not match "
                             f"{w.shape[1] * self.groups} output channels")
        for name in ("stride", "dilation", "output_padding"):
            v = tuple(int(x) for x in getattr(self, name))
            if len(v) != nd:
                raise ValueError(f"{name} {v} invalid for a {nd}-d transposed conv")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "pads", tuple((int(a), int(b)) for a, b in self.pads))

    @property
    def ndim(self) -> int:
        return self.weight.ndim - 2

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def in_channels(self) -> int:
        return self.weight.shape[0]

    def replace(self, **changes) -> "ConvTranspose":
        fields = dict(weight=self.weight, bias=self.bias, stride=self.stride, pads=self.pads,
                      dilation=self.dilation, output_padding=self.output_padding,
                      groups=self.groups)
        fields.update(changes)
        return ConvTranspose(**fields)


def scale_outputs(ct: ConvTranspose, scale, shift) -> ConvTranspose:
    """``scale[o] * ct(x)[o] + shift[o]`` (e.g. a BatchNorm after it, see :func:`from_bn`) as
    one transposed conv: output channel ``o``'s weights times ``scale[o]``, bias
    ``scale[o] * bias[o] + shift[o]``. Always exact: each output channel is linear in its
    own weights and bias, whatever the stride, padding and output padding."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    if scale.shape != (ct.out_channels,) or shift.shape != scale.shape:
        raise ValueError(f"{scale.size} scales for {ct.out_channels} output channels")
    g, opg = ct.groups, ct.weight.shape[1]
    per_group = scale.reshape(g, 1, opg, *(1,) * ct.ndim)  # weight rows i of group j ...
    ipg = ct.in_channels // g
    w = (ct.weight.reshape(g, ipg, opg, *ct.weight.shape[2:]) * per_group).reshape(ct.weight.shape)
    return ct.replace(weight=w, bias=scale * ct.bias + shift)
