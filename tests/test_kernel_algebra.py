"""Property tests of :mod:`reparam.kernel` against the independent references.

Every operation is checked on random 1-d and 2-d convs (kernel 1-7, stride 1-3,
dilation 1-3, symmetric and asymmetric padding, groups including depthwise,
with and without bias) and inputs sized so every output is non-empty. The
number of examples comes from the hypothesis profile (see ``conftest.py``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from reparam import kernel as K
from reparam.kernel import Conv, Refusal

try:
    from tests.reference import (avgpool_reference, bn_reference, conv_reference, make_conv,
                                 min_length, snapshot, unchanged)
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from reference import (avgpool_reference, bn_reference, conv_reference, make_conv,
                           min_length, snapshot, unchanged)

REL = 1e-10        # merged vs reference, relative to max(1, max|reference|)
SAME = 1e-12       # "identical" rewrites: only the reference's rounding differs

NDIMS = st.sampled_from([1, 2])
seeds = st.integers(0, 2**32 - 1)


def assert_close(actual, expected, rel=REL):
    """``max|actual - expected| <= rel * max(1, max|expected|)`` and equal shapes."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = float(np.max(np.abs(actual - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    assert err <= rel * scale, f"max|diff| {err:.3e} > {rel:.0e} * {scale:.3e}"


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def is_refusal(r) -> bool:
    return isinstance(r, Refusal) and isinstance(r.reason, str) and bool(r.reason.strip())


# --- strategies -----------------------------------------------------------------

@st.composite
def pad_pair(draw, max_pad=4):
    """``(begin, end)``: symmetric half of the time, otherwise independent."""
    b = draw(st.integers(0, max_pad))
    return (b, b) if draw(st.booleans()) else (b, draw(st.integers(0, max_pad)))


@st.composite
def channels_groups(draw):
    """``(in, out, groups)`` with groups dividing both; depthwise included."""
    g = draw(st.sampled_from([1, 2, 3, 4]))
    cin = g * draw(st.integers(1, 3))
    cout = cin if draw(st.booleans()) else g * draw(st.integers(1, 3))
    return cin, cout, g


@st.composite
def geometry(draw, nd, max_kernel=7, max_stride=3, max_dilation=3, max_pad=4):
    """Kernel, stride, pads, dilation for an ``nd``-d conv."""
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, max_stride)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, max_dilation)) for _ in range(nd))
    pads = tuple(draw(pad_pair(max_pad)) for _ in range(nd))
    return kernel, stride, pads, dilation


@st.composite
def input_for(draw, rng, channels, min_sizes, extra=6):
    """A random ``(N, channels, *spatial)`` input, each size ``>= min_sizes``."""
    spatial = tuple(m + draw(st.integers(0, extra)) for m in min_sizes)
    return rng.standard_normal((draw(st.integers(1, 2)), channels) + spatial)


def conv_min_sizes(conv: Conv):
    return [min_length(b, e, k, d)
            for (b, e), k, d in zip(conv.pads, conv.kernel_size, conv.dilation)]


@st.composite
def conv_and_input(draw, ndims=NDIMS, **geometry_limits):
    """A random conv and an input it maps to a non-empty output."""
    rng = np.random.default_rng(draw(seeds))
    nd = draw(ndims)
    cin, cout, g = draw(channels_groups())
    kernel, stride, pads, dilation = draw(geometry(nd, **geometry_limits))
    conv = make_conv(rng, cin, cout, kernel, stride, pads, dilation, g, bias=draw(st.booleans()))
    return conv, draw(input_for(rng, cin, conv_min_sizes(conv)))


@st.composite
def same_reach_branches(draw, max_kernel=7):
    """2-4 convs sharing in/out channels and stride, with equal reach, plus an input.

    Each branch draws kernel and dilation; a common reach ``n`` is chosen so no
    end pad is negative, then each branch's begin pad is drawn and its end pad
    is ``n + d*(k-1) - begin``. Groups may differ between branches.
    """
    rng = np.random.default_rng(draw(seeds))
    nd = draw(NDIMS)
    cin = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    cout = cin if draw(st.booleans()) else draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    count = draw(st.integers(2, 4))
    kd = [[(draw(st.integers(1, max_kernel)), draw(st.integers(1, 3))) for _ in range(nd)]
          for _ in range(count)]
    reach = [draw(st.integers(-min(d * (k - 1) for (k, d) in (b[j] for b in kd)), 3))
             for j in range(nd)]
    branches = []
    for b in kd:
        pads = []
        for j, (k, d) in enumerate(b):
            total = reach[j] + d * (k - 1)
            begin = draw(st.integers(0, total))
            pads.append((begin, total - begin))
        g = draw(st.sampled_from(divisors(math.gcd(cin, cout))))
        branches.append(make_conv(rng, cin, cout, [k for k, _ in b], stride, pads,
                                  [d for _, d in b], g, bias=draw(st.booleans())))
    sizes = [max(1, 1 - n) for n in reach]
    return branches, draw(input_for(rng, cin, sizes))


@st.composite
def compose_chain(draw, second_pads=False, first_pointwise=False, first_bias=None):
    """``first`` (c0 -> c1) and ``second`` (c1 -> c2), channels multiples of 4, groups 1/2/4.

    ``second_pads``: ``second`` has random padding (else none). ``first_pointwise``:
    ``first`` has kernel 1 and no padding (any stride/dilation). ``first_bias``:
    force ``first`` to have (True) or not have (False) a bias; None draws it.
    """
    rng = np.random.default_rng(draw(seeds))
    nd = draw(NDIMS)
    c0, c1, c2 = (4 * draw(st.integers(1, 2)) for _ in range(3))
    g1 = draw(st.sampled_from([1, 2, 4]))
    g2 = draw(st.sampled_from([1, 2, 4]))
    k1, s1, p1, d1 = draw(geometry(nd, max_kernel=5))
    if first_pointwise:
        k1, p1 = (1,) * nd, ((0, 0),) * nd
    k2, s2, p2, d2 = draw(geometry(nd, max_kernel=5))
    if not second_pads:
        p2 = ((0, 0),) * nd
    bias1 = draw(st.booleans()) if first_bias is None else first_bias
    first = make_conv(rng, c0, c1, k1, s1, p1, d1, g1, bias=bias1)
    second = make_conv(rng, c1, c2, k2, s2, p2, d2, g2, bias=draw(st.booleans()))
    # the intermediate must be at least as long as second needs
    sizes = [max(1, s * (min_length(b2, e2, kk2, dd2) - 1) + 1 + dd * (kk - 1) - b - e)
             for s, (b, e), kk, dd, (b2, e2), kk2, dd2 in zip(s1, p1, k1, d1, p2, k2, d2)]
    return first, second, draw(input_for(rng, c0, sizes))


# --- the reference itself --------------------------------------------------------

@given(conv_and_input(ndims=st.sampled_from([1, 2, 3]), max_kernel=4))
def test_reference_matches_torch(case):
    """The numpy reference equals torch's float64 conv{1,2,3}d after an explicit F.pad."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    conv, x = case
    flat = tuple(p for pair in reversed(conv.pads) for p in pair)  # last dim first
    xt = F.pad(torch.from_numpy(x), flat)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[conv.ndim]
    y = fn(xt, torch.from_numpy(conv.weight), torch.from_numpy(conv.bias),
           stride=conv.stride, dilation=conv.dilation, groups=conv.groups).numpy()
    assert_close(conv_reference(x, conv), y)


@given(seeds, NDIMS, st.data())
def test_avgpool_reference_matches_torch(seed, nd, data):
    """The numpy average pool equals torch's avg_pool over an explicitly zero-padded input."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(seed)
    kernel = tuple(data.draw(st.integers(1, 7)) for _ in range(nd))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    pads = tuple(data.draw(pad_pair()) for _ in range(nd))
    x = data.draw(input_for(rng, 3, [min_length(b, e, k, 1) for (b, e), k in zip(pads, kernel)]))
    flat = tuple(p for pair in reversed(pads) for p in pair)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d}[nd]
    y = fn(F.pad(torch.from_numpy(x), flat), kernel, stride).numpy()
    assert_close(avgpool_reference(x, kernel, stride, pads), y)


# --- convs built from layers -------------------------------------------------------

@given(seeds, NDIMS, st.integers(1, 6), st.floats(1e-6, 1e-1), st.data())
def test_from_bn(seed, nd, channels, eps, data):
    """from_bn(...) as a conv equals the batch-norm inference formula."""
    rng = np.random.default_rng(seed)
    mean, weight, bias = rng.standard_normal((3, channels))
    var = rng.uniform(0.0, 3.0, channels)
    stats = [a.copy() for a in (mean, var, weight, bias)]
    x = data.draw(input_for(rng, channels, [1] * nd))
    conv = K.from_bn(mean, var, weight, bias, eps, ndim=nd)
    assert_close(conv_reference(x, conv), bn_reference(x, mean, var, weight, bias, eps), SAME)
    assert all(np.array_equal(a, b) for a, b in zip(stats, (mean, var, weight, bias)))


@given(seeds, NDIMS, st.integers(1, 6), st.booleans(), st.data())
def test_scale_channels(seed, nd, channels, scalar_shift, data):
    """scale_channels(scale, shift) equals ``scale*x + shift`` per channel (shift may be scalar)."""
    rng = np.random.default_rng(seed)
    scale = rng.standard_normal(channels)
    shift = rng.standard_normal() if scalar_shift else rng.standard_normal(channels)
    x = data.draw(input_for(rng, channels, [1] * nd))
    conv = K.scale_channels(scale, shift, ndim=nd)
    r = (1, -1) + (1,) * nd
    assert_close(conv_reference(x, conv),
                 x * scale.reshape(r) + np.broadcast_to(shift, scale.shape).reshape(r), SAME)


@given(seeds, NDIMS, st.sampled_from([1, 2, 3, 4]), st.integers(1, 3), st.data())
def test_identity(seed, nd, groups, per_group, data):
    """identity(channels, groups) returns its input exactly, for any number of groups."""
    rng = np.random.default_rng(seed)
    channels = groups * per_group
    x = data.draw(input_for(rng, channels, [1] * nd))
    conv = K.identity(channels, groups, ndim=nd)
    assert conv.groups == groups
    assert np.array_equal(conv_reference(x, conv), x)
    if groups == channels:  # the default is depthwise
        assert np.array_equal(conv_reference(x, K.identity(channels, ndim=nd)), x)


@st.composite
def pool_params(draw):
    nd = draw(NDIMS)
    kernel = tuple(draw(st.integers(1, 7)) for _ in range(nd))
    stride = None if draw(st.booleans()) else tuple(draw(st.integers(1, 3)) for _ in range(nd))
    pads = tuple(draw(pad_pair()) for _ in range(nd))
    return kernel, stride, pads


@given(seeds, pool_params(), st.integers(1, 4), st.data())
def test_avgpool_count_include_pad(seed, params, channels, data):
    """avgpool with count_include_pad=True equals average pooling (default stride = kernel)."""
    kernel, stride, pads = params
    rng = np.random.default_rng(seed)
    conv = K.avgpool(channels, kernel, stride, pads, count_include_pad=True)
    assert isinstance(conv, Conv)
    x = data.draw(input_for(rng, channels, [min_length(b, e, k, 1) for (b, e), k in zip(pads, kernel)]))
    assert_close(conv_reference(x, conv),
                 avgpool_reference(x, kernel, stride or kernel, pads), SAME)


@given(seeds, pool_params(), st.integers(1, 4), st.data())
def test_avgpool_exclude_pad(seed, params, channels, data):
    """count_include_pad=False: refused with padding, exact without; ceil_mode always refused."""
    kernel, stride, pads = params
    assert is_refusal(K.avgpool(channels, kernel, stride, pads, ceil_mode=True))
    assert is_refusal(K.avgpool(channels, kernel, stride, pads, True, ceil_mode=True))
    if any(b or e for b, e in pads):
        assert is_refusal(K.avgpool(channels, kernel, stride, pads, count_include_pad=False))
    nopad = ((0, 0),) * len(kernel)
    conv = K.avgpool(channels, kernel, stride, nopad, count_include_pad=False)
    assert isinstance(conv, Conv)
    x = data.draw(input_for(np.random.default_rng(seed), channels, kernel))
    assert_close(conv_reference(x, conv),
                 avgpool_reference(x, kernel, stride or kernel, nopad), SAME)


# --- rewrites of one conv ------------------------------------------------------------

@given(conv_and_input(), st.data())
def test_pad(case, data):
    """pad(conv, extra) adds zero taps and padding: same output, same shape."""
    conv, x = case
    extra = tuple((data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
                  for _ in range(conv.ndim))
    before = snapshot(conv)
    grown = K.pad(conv, extra)
    assert unchanged(before, conv)
    assert grown.kernel_size == tuple(k + a + b for k, (a, b) in zip(conv.kernel_size, extra))
    assert grown.reach == conv.reach
    assert_close(conv_reference(x, grown), conv_reference(x, conv), SAME)


@given(conv_and_input(), st.data())
def test_pad_to(case, data):
    """pad_to(even growth) keeps the output; odd growth or a smaller kernel is refused."""
    conv, x = case
    grow = [data.draw(st.integers(0, 3)) for _ in range(conv.ndim)]
    target = tuple(k + 2 * m for k, m in zip(conv.kernel_size, grow))
    grown = K.pad_to(conv, target)
    assert isinstance(grown, Conv) and grown.kernel_size == target
    assert_close(conv_reference(x, grown), conv_reference(x, conv), SAME)
    j = data.draw(st.integers(0, conv.ndim - 1))
    odd = list(target)
    odd[j] += 1
    assert is_refusal(K.pad_to(conv, tuple(odd)))
    if conv.kernel_size[j] > 2:
        small = list(conv.kernel_size)
        small[j] -= 2  # an even shrink: cannot be done by adding zero taps
        assert is_refusal(K.pad_to(conv, tuple(small)))


@given(conv_and_input(max_dilation=1, max_kernel=5), st.data())
def test_undilate(case, data):
    """undilate(conv with dilation D*r, D) inserts zero taps: same output."""
    conv, x = case
    fine = tuple(data.draw(st.integers(1, 3)) for _ in range(conv.ndim))
    ratio = tuple(data.draw(st.integers(1, 3)) for _ in range(conv.ndim))
    conv = conv.replace(dilation=tuple(f * r for f, r in zip(fine, ratio)))
    rng = np.random.default_rng(data.draw(seeds))
    x = data.draw(input_for(rng, conv.in_channels, conv_min_sizes(conv)))
    before = snapshot(conv)
    finer = K.undilate(conv, fine)
    assert unchanged(before, conv)
    assert finer.dilation == fine and finer.reach == conv.reach
    assert_close(conv_reference(x, finer), conv_reference(x, conv), SAME)


@given(conv_and_input(), st.data())
def test_regroup(case, data):
    """regroup(conv, g') for g' dividing conv.groups scatters block-diagonally: same output."""
    conv, x = case
    target = data.draw(st.sampled_from(divisors(conv.groups)))
    before = snapshot(conv)
    coarse = K.regroup(conv, target)
    assert unchanged(before, conv)
    assert coarse.groups == target and coarse.in_channels == conv.in_channels
    assert_close(conv_reference(x, coarse), conv_reference(x, conv), SAME)


# --- add ---------------------------------------------------------------------------------

@given(same_reach_branches())
def test_add_equals_sum_of_branches(case):
    """add(*branches) of equal-reach, equal-stride branches equals the sum of their outputs."""
    branches, x = case
    before = snapshot(*branches)
    merged = K.add(*branches)
    assert unchanged(before, *branches)
    assert isinstance(merged, Conv), merged
    expected = sum(conv_reference(x, b) for b in branches)
    assert_close(conv_reference(x, merged), expected)


@given(same_reach_branches(), st.data())
def test_add_refuses_misaligned(case, data):
    """add refuses branches whose strides, reaches or channel counts differ."""
    branches, _ = case
    i = data.draw(st.integers(1, len(branches) - 1))
    j = data.draw(st.integers(0, branches[0].ndim - 1))
    b = branches[i]

    stride = list(b.stride)
    stride[j] += data.draw(st.integers(1, 2))
    moved = branches[:i] + [b.replace(stride=tuple(stride))] + branches[i + 1:]
    assert is_refusal(K.add(*moved)), "different strides"

    pads = [list(p) for p in b.pads]
    pads[j][data.draw(st.integers(0, 1))] += data.draw(st.integers(1, 2))
    moved = branches[:i] + [b.replace(pads=tuple(map(tuple, pads)))] + branches[i + 1:]
    assert is_refusal(K.add(*moved)), "different reach"

    rng = np.random.default_rng(data.draw(seeds))
    wider = make_conv(rng, b.in_channels, b.out_channels + b.groups, b.kernel_size,
                      b.stride, b.pads, b.dilation, b.groups)
    assert is_refusal(K.add(*branches[:i], wider, *branches[i + 1:])), "different out channels"
    deeper = make_conv(rng, b.in_channels + 1, b.out_channels, b.kernel_size,
                       b.stride, b.pads, b.dilation, 1)
    assert is_refusal(K.add(*branches[:i], deeper, *branches[i + 1:])), "different in channels"


# --- compose -------------------------------------------------------------------------------

def check_composed(first, second, x):
    before = snapshot(first, second)
    composed = K.compose(first, second)
    assert unchanged(before, first, second)
    assert isinstance(composed, Conv), composed
    expected = conv_reference(conv_reference(x, first), second)
    y = conv_reference(x, composed)
    assert y.shape == expected.shape
    assert_close(y, expected)


@given(compose_chain())
def test_compose_unpadded_second(case):
    """compose(first, second) with an unpadded second equals second(first(x)), any geometry."""
    check_composed(*case)


@given(compose_chain(second_pads=True, first_pointwise=True, first_bias=False))
def test_compose_padded_second_pointwise_first(case):
    """A padded second after a pointwise, bias-free first composes exactly."""
    check_composed(*case)


@given(compose_chain(second_pads=True))
def test_compose_padded_second_refused_wide_first(case):
    """A padded second after a first with kernel > 1 or padding is refused (any bias)."""
    first, second, _ = case
    assume(any(b or e for b, e in second.pads))
    assume(any(k > 1 for k in first.kernel_size) or any(b or e for b, e in first.pads))
    assert is_refusal(K.compose(first, second))


@given(compose_chain(second_pads=True, first_pointwise=True, first_bias=True), st.data())
def test_compose_padded_second_refused_biased_first(case, data):
    """A padded second after a pointwise first with a non-zero bias is refused."""
    first, second, _ = case
    assume(any(b or e for b, e in second.pads))
    bias = np.zeros(first.out_channels)  # a single non-zero entry is enough
    bias[data.draw(st.integers(0, first.out_channels - 1))] = data.draw(
        st.sampled_from([1.0, -2.5, 1e-300]))
    assert is_refusal(K.compose(first, second))
    assert is_refusal(K.compose(first.replace(bias=bias), second))


def test_compose_refuses_channel_mismatch():
    """compose refuses when first's outputs are not second's inputs."""
    rng = np.random.default_rng(0)
    first = make_conv(rng, 2, 3, (3, 3))
    second = make_conv(rng, 4, 2, (1, 1))
    assert is_refusal(K.compose(first, second))


# --- no operation mutates its inputs -----------------------------------------------------

@given(conv_and_input(), compose_chain(second_pads=True), same_reach_branches())
def test_no_mutation(single, chain, branches):
    """Every operation, refusing or not, leaves its input convs untouched."""
    conv, _ = single
    first, second, _ = chain
    branches, _ = branches
    everything = [conv, first, second, *branches]
    before = snapshot(*everything)
    nd = conv.ndim
    K.pad(conv, ((1, 2),) * nd)
    K.pad_to(conv, tuple(k + 2 for k in conv.kernel_size))
    K.pad_to(conv, tuple(k + 1 for k in conv.kernel_size))
    K.undilate(conv, (1,) * nd)
    K.regroup(conv, 1)
    K.add(conv, conv)
    K.add(*branches)
    K.add(*branches, conv)
    K.compose(first, second)
    K.compose(first.replace(weight=first.weight[(Ellipsis,) + (slice(0, 1),) * first.ndim],
                            pads=((0, 0),) * first.ndim), second)
    K.compose(conv, K.identity(conv.out_channels, ndim=nd))
    K.compose(K.identity(conv.in_channels, ndim=nd), conv)
    assert unchanged(before, *everything)


# --- narrow (float32 / float16) weights compute as their float64 copies ------------------

def held_narrow(conv: Conv, dtype) -> Conv:
    """``conv`` with its weight rounded to ``dtype`` and held so: read-only, as a view of a
    model file's pages is."""
    w = conv.weight.astype(dtype)
    w.flags.writeable = False
    held = conv.replace(weight=w)
    assert held.weight is w  # kept as it is, not copied
    return held


def widened(conv: Conv) -> Conv:
    """The same conv with a float64 copy of its weight."""
    return conv.replace(weight=conv.weight.astype(np.float64))


def assert_same_result(narrow, wide) -> None:
    """``narrow`` (an operation on narrow-weight convs) equals ``wide`` (the operation on their
    float64 copies) bit for bit, or both refuse for the same reason."""
    if isinstance(wide, Refusal):
        assert narrow == wide
        return
    assert np.array_equal(narrow.weight.astype(np.float64), wide.weight)
    assert narrow.bias.dtype == np.float64 and np.array_equal(narrow.bias, wide.bias)
    assert (narrow.stride, narrow.pads, narrow.dilation, narrow.groups) == \
        (wide.stride, wide.pads, wide.dilation, wide.groups)


NARROW_DTYPES = st.sampled_from([np.float32, np.float16])


@given(conv_and_input(), same_reach_branches(), NARROW_DTYPES, st.floats(-3, 3), st.data())
def test_narrow_weights_reshape_and_add_as_float64(single, branches, dtype, c, data):
    conv, _ = single
    branches, _ = branches
    n = held_narrow(conv, dtype)
    w = widened(n)
    nd = conv.ndim
    extra = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(nd))
    assert_same_result(K.pad(n, extra), K.pad(w, extra))
    grown = tuple(k + 2 for k in conv.kernel_size)
    assert_same_result(K.pad_to(n, grown), K.pad_to(w, grown))
    assert_same_result(K.undilate(n, (1,) * nd), K.undilate(w, (1,) * nd))
    assert_same_result(K.regroup(n, 1), K.regroup(w, 1))
    scaled = K.scale(n, c)
    assert scaled.weight.dtype == np.float64  # a product is computed in float64
    assert_same_result(scaled, K.scale(w, c))
    mixed = [held_narrow(b, dtype) if data.draw(st.booleans()) else b for b in branches]
    total = K.add(*mixed)
    assert_same_result(total, K.add(*(widened(b) for b in mixed)))
    if total:
        assert total.weight.dtype == np.float64


@given(compose_chain(), NARROW_DTYPES, st.booleans(), st.booleans())
def test_narrow_weights_compose_as_float64(chain, dtype, narrow_first, narrow_second):
    """Composition (the general case and the channel-scale case of conv -> BatchNorm): the
    products of two narrow weights are taken in float64, not in their own dtype."""
    first, second, _ = chain
    rng = np.random.default_rng(0)
    a = held_narrow(first, dtype) if narrow_first else first
    b = held_narrow(second, dtype) if narrow_second else second
    composed = K.compose(a, b)
    assert_same_result(composed, K.compose(widened(a), widened(b)))
    if composed:
        assert composed.weight.dtype == np.float64
    scale = K.scale_channels(rng.standard_normal(first.out_channels),
                             rng.standard_normal(first.out_channels), ndim=first.ndim)
    s = held_narrow(scale, dtype) if narrow_second else scale
    assert_same_result(K.compose(a, s), K.compose(widened(a), widened(s)))
    assert K.compose(a, s).weight.dtype == np.float64
