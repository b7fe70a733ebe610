"""Random DAGs of Rep-style layers, as a neutral description and as torch / ONNX models.

:func:`graphs` is a hypothesis strategy that draws a :class:`Spec`: an input
shape ``(N, C, *spatial)`` with 1, 2 or 3 spatial dimensions and a list of
:class:`Op` (conv, BatchNorm, identity, Add/Sub/Sum trees, non-linearities,
average pooling, zero padding, affine constants, concat), each reading earlier
tensors, and the graph outputs (every tensor nobody reads, sometimes an
intermediate one too). Graphs are chains of blocks:

* *branches*: 1-4 parallel linear branches of one tensor, each aimed at one
  output shape (conv with random kernel 1-7 (1-3 in 3-d), stride, dilation 1-3,
  groups including depthwise, symmetric or asymmetric padding, with or without
  bias; conv+BN; conv+scale; conv chains; pad+conv; BN+conv; BN; identity; scale;
  average pool; a branch through a non-linearity), summed by a random
  Add/Sub/Sum tree, sometimes followed by a non-linearity;
* a single random layer on any earlier tensor (tensors get several consumers), or an
  earlier conv applied again to another tensor (shared weights), maybe followed by a BN;
* a concat or a sum of earlier tensors of matching shapes.

Spellings and traps, drawn among them: ``torch.add/sub`` and ``Tensor.add/sub``
with ``alpha``; in-place ops (``relu_``-style activations, ``add_``/``sub_``,
``mul_``/``div_``/``add_``/``sub_`` by a constant, ``x += y``), also on tensors
that other branches read before and after the change; forward hooks and
pre-hooks on convs and BatchNorms; constants that broadcast without being
per-channel (``(C, 1)``, the spatial shape, ``(1, 1, 1, 1, 1)`` then squeezed).

:func:`foldable_chains` draws chains of blocks each of which folds exactly into
one conv, with the node counts a fuse must reach.

Parameters are not drawn by hypothesis: op ``i`` draws its own from
``numpy.random.default_rng([seed, i])`` (float32-representable float64
values), so a spec written as a literal (its ``repr``) is a complete,
reproducible test case, and deleting an op while shrinking leaves the others'
parameters as they were.

Builders: :func:`to_module` (an fx-traceable ``nn.Module``) and :func:`to_onnx`
(an ``onnx.ModelProto`` built with ``onnx.helper``; no torch needed; hooks become
the nodes they compute, in-place ops ordinary nodes whose readers read the result).
:func:`eval_onnx` evaluates an ONNX model of these ops in any torch dtype (the
float64 oracle; onnxruntime has no float64 Conv).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from hypothesis import strategies as st

ACTS = ("relu", "sigmoid", "tanh", "leaky_relu")
AFFINE_OPS = ("mul", "add", "sub", "div")
LEAKY_SLOPE = 0.125  # exact in float32
EPS = (float(np.float32(1e-5)), float(np.float32(1e-3)), 0.0625)
ALPHAS = (2.0, -1.0, 0.5, 3, -2)  # the alpha of torch.add/sub; exact in float16
#: what the hooks compute: ``out * 1.5 + 0.25`` after the layer, ``x * 0.75 - 0.125`` before it
HOOK_AFTER = (1.5, 0.25)
HOOK_BEFORE = (0.75, 0.125)
#: shape codes of an affine op's constant, for an input (N, C, *spatial) of rank r:
#: per-channel ``c11`` (C, 1, ..., 1) of rank r - 1, ``1c11`` (1, C, 1, ..., 1), ``scalar`` (a
#: number); not per-channel (on rank 4 and 5) ``c1`` (C, 1) (which broadcasts only where the
#: second-last dimension is C), ``spatial`` (the spatial shape), ``11111`` (1,) * (r + 1),
#: whose product has one dimension more and is squeezed back
CONST_SHAPES = ("c11", "1c11", "scalar", "c1", "spatial", "11111")


@dataclass(frozen=True, eq=False)
class Op:
    """One layer: ``kind``, the tensor ids it reads (0 is the graph input), attributes.

    Sizes, strides, pads have one entry per spatial dimension.

    ``conv``: out, k, stride, dilation, pads ((begin, end) per dimension), groups, bias;
    optionally shared=j: the very weights of conv op ``j`` (same attributes; torch calls the
    same module again, ONNX reads the same initializers); optionally hook='after' | 'before'
    (a forward hook / pre-hook on the module, see :data:`HOOK_AFTER`; 'before' only without
    asymmetric padding, which torch writes as a pad before the module)
    ``bn``: eps, var ('normal' | 'small' | 'large'), affine; optionally hook, as for conv
    ``act``: fn (one of :data:`ACTS`), functional (torch builder: F.* instead of a module);
    optionally inplace=True (``F.relu(x, inplace=True)``, ``torch.sigmoid_``, ``x.tanh_()``,
    ``F.leaky_relu_``; modules: ``nn.ReLU(inplace=True)``, ``nn.LeakyReLU(.., inplace=True)``)
    ``avgpool``: k, stride, pad (per dimension), count_include_pad
    ``pad``: pads, functional (torch: F.pad; ONNX: Pad with axes)
    ``affine``: op (one of :data:`AFFINE_OPS`), shape (one of :data:`CONST_SHAPES`), const_first;
    optionally spelling='method_' (``x.mul_(c)``) | 'augmented' (``x *= c``) (in place), and
    noop=True (the constant all 1 for mul, all 0 for add and sub: ``x * 1`` is a copy of ``x``)
    ``identity``; ``sum`` (n inputs); ``concat`` (n inputs)
    ``add``, ``sub`` (two inputs): optionally spelling='torch' (``torch.add(a, b)``) | 'method'
    (``a.add(b)``) | 'method_' (``a.add_(b)``) | 'augmented' (``a += b``), and alpha (a number:
    ``a + alpha * b``; with the spellings 'torch', 'method', 'method_')

    In-place ops change their first input, as torch does: a later read of that tensor (or of
    a name of it: an ``identity`` returns its input itself) reads the changed value; see
    :attr:`Spec.reads`.
    """

    kind: str
    inputs: tuple
    attrs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Op({self.kind!r}, {self.inputs!r}, {self.attrs!r})"


def mutates(op: Op) -> bool:
    """Whether ``op`` writes its result into its first input (a torch in-place op)."""
    return bool(op.attrs.get("inplace")) or op.attrs.get("spelling") in ("method_", "augmented")


def out_len(length, k, s, d, begin, end) -> int:
    return (length + begin + end - d * (k - 1) - 1) // s + 1


def const_shape(code, shape) -> tuple:
    """The shape of an affine op's constant (see :data:`CONST_SHAPES`) for an input of
    ``shape`` (C, *spatial); () for a number."""
    c, nd = shape[0], len(shape) - 1
    return {"c11": (c,) + (1,) * nd, "1c11": (1, c) + (1,) * nd, "scalar": (), "c1": (c, 1),
            "spatial": tuple(shape[1:]), "11111": (1,) * (nd + 3)}[code]


def broadcasts(code, shape) -> bool:
    """Whether the constant of ``code`` broadcasts against an input of ``shape`` (C, *spatial)
    without enlarging it (``11111`` adds a dimension of 1, squeezed back)."""
    const, full = const_shape(code, shape), (1, *shape)
    if len(const) > len(full):
        return set(const) == {1}
    return all(d in (1, n) for d, n in zip(reversed(const), reversed(full)))


def _shape_after(op: Op, shapes) -> tuple:
    c, *size = shapes[op.inputs[0]]
    a = op.attrs
    if op.kind == "conv":
        return (a["out"], *(out_len(n, k, s, d, b, e) for n, k, s, d, (b, e)
                            in zip(size, a["k"], a["stride"], a["dilation"], a["pads"])))
    if op.kind == "avgpool":
        return (c, *(out_len(n, k, s, 1, p, p) for n, k, s, p in zip(size, a["k"], a["stride"], a["pad"])))
    if op.kind == "pad":
        return (c, *(n + b + e for n, (b, e) in zip(size, a["pads"])))
    if op.kind == "concat":
        return (sum(shapes[i][0] for i in op.inputs), *size)
    return (c, *size)


class _Aliases:
    """Which tensors share memory in the torch model (an in-place op's result and ``identity``'s
    output are their input), and which value each name holds as ops run."""

    def __init__(self):
        self.storage, self.version = [0], [0]
        self.latest = {0: (0, 0)}  # storage -> (version, the tensor its latest change made)

    def read(self, j) -> int:
        """The tensor whose value a read of ``j`` gets now."""
        version, tensor = self.latest[self.storage[j]]
        return j if self.version[j] == version else tensor

    def stale(self, j) -> bool:
        return self.read(j) != j

    def step(self, i, op):
        """Record op ``i`` (after its reads)."""
        s = self.storage[op.inputs[0]]
        if mutates(op):
            assert s != 0, (i, op, "the model's input is never changed")
            version = self.latest[s][0] + 1
            self.latest[s] = (version, i)
            self.storage.append(s)
            self.version.append(version)
        elif op.kind == "identity":
            self.storage.append(s)
            self.version.append(self.latest[s][0])
        else:
            self.storage.append(i)
            self.version.append(0)
            self.latest[i] = (0, i)


@dataclass(frozen=True, eq=False)
class Spec:
    """A random graph: input ``shape`` (N, C, *spatial), ``ops``, ``outputs`` (tensor ids), ``seed``
    of the parameters, and the ONNX ``opset`` to build it with."""

    shape: tuple
    ops: tuple
    outputs: tuple
    seed: int = 0
    opset: int = 17

    def __post_init__(self):
        shapes, reads = self.shapes, self.reads  # validate
        assert self.outputs and 0 not in self.outputs and len(set(self.outputs)) == len(self.outputs)
        assert all(0 < o < len(shapes) for o in self.outputs)
        assert all(not self._alias_run[0].stale(o) for o in self.outputs), "an output is a changed tensor"
        assert len(reads) == len(self.ops)

    def __repr__(self) -> str:
        ops = "".join(f"\n        {op!r}," for op in self.ops)
        return (f"Spec(shape={self.shape!r}, seed={self.seed!r}, opset={self.opset!r}, "
                f"outputs={self.outputs!r}, ops=({ops}\n    ))")

    @property
    def ndim(self) -> int:
        """The number of spatial dimensions."""
        return len(self.shape) - 2

    @cached_property
    def shapes(self) -> list:
        """(C, *spatial) of every tensor: the input, then one per op."""
        nd = self.ndim
        assert 1 <= nd <= 3, self.shape
        shapes = [tuple(self.shape[1:])]
        for i, op in enumerate(self.ops, 1):
            assert op.inputs and all(0 <= j < i for j in op.inputs), (i, op)
            ins = [shapes[j] for j in op.inputs]
            a = op.attrs
            for key in ("k", "stride", "dilation", "pads", "pad"):
                assert key not in a or len(a[key]) == nd, (i, op)
            if op.kind in ("add", "sub", "sum"):
                assert len(set(ins)) == 1 and len(ins) == (len(ins) if op.kind == "sum" else 2), (i, op)
                assert "alpha" not in a or a.get("spelling") in ("torch", "method", "method_"), (i, op)
            if op.kind == "concat":
                assert len({s[1:] for s in ins}) == 1, (i, op)
            if op.kind == "avgpool":  # torch's avg_pool3d refuses an input smaller than its kernel
                assert all(k <= n for k, n in zip(a["k"], ins[0][1:])), (i, op)
            if op.kind == "affine":
                assert broadcasts(a["shape"], ins[0]), (i, op)
                assert not mutates(op) or (not a["const_first"] and a["shape"] != "11111"), (i, op)
            if op.kind == "conv":
                g = a["groups"]
                assert ins[0][0] % g == 0 and a["out"] % g == 0, (i, op)
                assert a.get("hook") != "before" or all(b == e for b, e in a["pads"]), (i, op)
                j = a.get("shared")
                if j:
                    first = self.ops[j - 1]
                    assert 0 < j < i and first.kind == "conv" and not first.attrs.get("shared"), (i, op)
                    assert {**first.attrs, "shared": j} == a, (i, op)
                    assert shapes[first.inputs[0]][0] == ins[0][0], (i, op)
            s = _shape_after(op, shapes)
            assert min(s) >= 1, (i, op, s)
            shapes.append(s)
        return shapes

    @cached_property
    def _alias_run(self) -> tuple:
        aliases, reads = _Aliases(), []
        for i, op in enumerate(self.ops, 1):
            reads.append(tuple(aliases.read(j) for j in op.inputs))
            aliases.step(i, op)
        return aliases, tuple(reads)

    @property
    def reads(self) -> tuple:
        """Per op, the tensors whose values it reads: its inputs, except that an input changed in
        place since it was made reads the tensor the latest change made."""
        return self._alias_run[1]

    def rng(self, i) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    @cached_property
    def params(self) -> list:
        """Per op, a dict of float64 arrays (all float32-representable)."""
        params = []
        for i, op in enumerate(self.ops, 1):
            j = op.attrs.get("shared")
            params.append(params[j - 1] if j else _params(op, self.shapes[op.inputs[0]], self.rng(i)))
        return params

    def input(self, batch=None) -> np.ndarray:
        n, *rest = self.shape
        x = self.rng(0).standard_normal((batch or n, *rest))
        return x.astype(np.float32).astype(np.float64)


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def _params(op: Op, shape, rng) -> dict:
    a, cin = op.attrs, shape[0]
    if op.kind == "conv":
        fan_in = cin // a["groups"] * math.prod(a["k"])
        p = {"weight": _f32(rng.standard_normal((a["out"], cin // a["groups"], *a["k"])) / math.sqrt(fan_in))}
        if a["bias"]:
            p["bias"] = _f32(0.5 * rng.standard_normal(a["out"]))
        return p
    if op.kind == "bn":
        lo, hi = {"normal": (0.5, 2.0), "small": (1e-4, 1e-2), "large": (10.0, 100.0)}[a["var"]]
        sign = np.where(rng.random(cin) < 0.2, -1.0, 1.0)
        return {"mean": _f32(rng.standard_normal(cin)), "var": _f32(rng.uniform(lo, hi, cin)),
                "weight": _f32(sign * rng.uniform(0.5, 1.5, cin)) if a["affine"] else np.ones(cin),
                "bias": _f32(0.3 * rng.standard_normal(cin)) if a["affine"] else np.zeros(cin)}
    if op.kind == "affine":
        n = const_shape(a["shape"], shape) or (1,)
        if a.get("noop"):  # x * 1, x / 1, x + 0, x - 0: a copy of x
            return {"value": np.full(n, 1.0 if a["op"] in ("mul", "div") else 0.0)}
        sign = np.where(rng.random(n) < 0.3, -1.0, 1.0)
        return {"value": _f32(sign * rng.uniform(0.5, 2.0, n))}
    return {}


# --- the strategy -----------------------------------------------------------------------------

def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


class _Draft:
    """A spec being drawn: ops, shapes, how often each tensor's value is read, and which
    tensors share memory."""

    def __init__(self, shape):
        self.shape = shape
        self.ops: list[Op] = []
        self.shapes = [tuple(shape[1:])]
        self.uses = [0]
        self.aliases = _Aliases()
        self.max_k = 7 if len(shape) < 5 else 3

    def add(self, kind, inputs, **attrs) -> int:
        op = Op(kind, tuple(inputs), attrs)
        s = _shape_after(op, self.shapes)
        assert min(s) >= 1, (op, s)
        for j in inputs:
            self.uses[self.aliases.read(j)] += 1
        self.aliases.step(len(self.shapes), op)
        self.ops.append(op)
        self.shapes.append(s)
        self.uses.append(0)
        return len(self.shapes) - 1

    def changeable(self, j) -> bool:
        """Whether an in-place op may change tensor ``j`` (not the model's input)."""
        return self.aliases.storage[j] != 0


def _pick(draw, draft) -> int:
    """An earlier tensor, most often a recent one (shrinks towards the latest)."""
    n = len(draft.shapes)
    return n - 1 - draw(st.integers(0, n - 1))


def _rarely(draw, value, default=None):
    """``value`` one time in four, else ``default``."""
    return draw(st.sampled_from([default, default, default, value]))


def _conv_dim(draw, length, stride, target, max_k):
    """(k, d, total padding) of one dimension of a conv mapping ``length`` to ``target``."""
    k = draw(st.integers(1, max_k))
    d = draw(st.integers(1, 3)) if k > 1 else 1
    lo = (target - 1) * stride + d * (k - 1) + 1 - length  # smallest total padding reaching target
    if lo + stride - 1 < 0:  # the kernel is too small to shrink that much: an undilated larger one
        d, k = 1, length - target * stride + 1
        lo = (target - 1) * stride + (k - 1) + 1 - length
    total = draw(st.integers(max(lo, 0), lo + stride - 1))
    return k, d, total


def _split(draw, totals):
    """Per-dimension (begin, end) pads: symmetric where even unless drawn asymmetric."""
    asym = draw(st.booleans())
    out = []
    for t in totals:
        b = draw(st.integers(0, t)) if asym else t // 2
        out.append((b, t - b))
    return tuple(out)


def _groups(draw, cin, cout):
    return draw(st.sampled_from(_divisors(math.gcd(cin, cout))))


def _hook(draw, attrs):
    """``attrs`` with a hook, sometimes (a pre-hook only where torch pads inside the module)."""
    symmetric = all(b == e for b, e in attrs.get("pads", ()))
    hook = draw(st.sampled_from([None] * 6 + ["after"] + ["before"] * symmetric))
    return {**attrs, "hook": hook} if hook else attrs


def _conv(draw, draft, src, cout, stride, target, max_k=None):
    c, *size = draft.shapes[src]
    max_k = max_k or draft.max_k
    dims = []
    for n, s, t in zip(size, stride, target):
        if dims and not draw(st.booleans()):  # the first dimension's kernel again, where it fits
            k, d, _ = dims[0]
            lo = (t - 1) * s + d * (k - 1) + 1 - n
            if lo + s - 1 >= 0:
                dims.append((k, d, draw(st.integers(max(lo, 0), lo + s - 1))))
                continue
        dims.append(_conv_dim(draw, n, s, t, max_k))
    ks, ds, totals = zip(*dims)
    attrs = dict(out=cout, k=ks, stride=tuple(stride), dilation=ds, pads=_split(draw, totals),
                 groups=_groups(draw, c, cout), bias=draw(st.booleans()))
    return draft.add("conv", [src], **_hook(draw, attrs))


def _bn(draw, draft, src):
    attrs = dict(eps=draw(st.sampled_from(EPS)), var=draw(st.sampled_from(["normal", "normal", "small", "large"])),
                 affine=not draw(st.booleans()) or draw(st.booleans()))
    return draft.add("bn", [src], **_hook(draw, attrs))


def _act(draw, draft, src):
    fn, functional = draw(st.sampled_from(ACTS)), draw(st.booleans())
    if draft.changeable(src) and _rarely(draw, True, False):
        # torch's Sigmoid and Tanh modules have no in-place form
        return draft.add("act", [src], fn=fn, functional=functional or fn in ("sigmoid", "tanh"), inplace=True)
    return draft.add("act", [src], fn=fn, functional=functional)


def _affine(draw, draft, src, codes=CONST_SHAPES, in_place=("method_", "augmented")):
    op = draw(st.sampled_from(AFFINE_OPS))
    code = draw(st.sampled_from([c for c in codes if broadcasts(c, draft.shapes[src])]))
    const_first = op != "div" and draw(st.booleans())
    attrs = dict(op=op, shape=code, const_first=const_first)
    if op != "div" and _rarely(draw, True, False):
        attrs["noop"] = True
    if in_place and not const_first and code != "11111" and draft.changeable(src):
        spelling = _rarely(draw, draw(st.sampled_from(in_place)))
        attrs.update({"spelling": spelling} if spelling else {})
    return draft.add("affine", [src], **attrs)


def _binary(draw, draft, kind, ins, in_place=("method_", "augmented"), alpha=True):
    """An add or sub of two tensors, in one of torch's spellings (``in_place``: the in-place
    ones it may use; ``alpha``: whether it may scale the second)."""
    spellings = ["operator", "operator", "torch", "method"]
    if draft.changeable(ins[0]):
        spellings += list(in_place)
    spelling = draw(st.sampled_from(spellings))
    attrs = {} if spelling == "operator" else {"spelling": spelling}
    if alpha and spelling in ("torch", "method", "method_"):
        alpha = draw(st.sampled_from((None,) + ALPHAS))
        attrs.update({"alpha": alpha} if alpha is not None else {})
    return draft.add(kind, ins, **attrs)


def _pad(draw, draft, src, pads=None):
    if pads is None:
        pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in draft.shapes[src][1:])
    return draft.add("pad", [src], pads=pads, functional=draw(st.booleans()))


def _avgpool_to(draw, draft, src, stride, target):
    """An average pool reaching ``target``, or None when no small one does."""
    _, *size = draft.shapes[src]
    dims = []
    for n, s, t in zip(size, stride, target):
        options = [(k, p) for k in range(1, min(n, 4) + 1) for p in range(k // 2 + 1)
                   if out_len(n, k, s, 1, p, p) == t]
        if not options:
            return None
        dims.append(draw(st.sampled_from(options)))
    k, pad = zip(*dims)
    return draft.add("avgpool", [src], k=k, stride=tuple(stride), pad=pad,
                     count_include_pad=draw(st.booleans()))


def _branch(draw, draft, src, cout, stride, target):
    """One linear (or deliberately not) branch from ``src`` to shape (cout, *target)."""
    c, *size = draft.shapes[src]
    same = c == cout and set(stride) == {1} and tuple(target) == tuple(size)
    kinds = ["conv", "conv_bn", "conv_affine", "conv_conv", "pad_conv", "bn_conv", "act_conv"]
    if same:
        kinds += ["input", "identity", "bn", "affine", "bn_affine"]
    if c == cout:
        kinds += ["avgpool"]
        if set(stride) == {1} and all(t >= n for t, n in zip(target, size)):
            kinds += ["pad"]
    kind = draw(st.sampled_from(kinds))
    if kind == "input":
        return src
    if kind == "identity":
        return draft.add("identity", [src])
    if kind == "bn":
        return _bn(draw, draft, src)
    if kind == "affine":
        return _affine(draw, draft, src)
    if kind == "bn_affine":
        return _affine(draw, draft, _bn(draw, draft, src))
    if kind == "avgpool":
        pooled = _avgpool_to(draw, draft, src, stride, target)
        if pooled is not None:
            return pooled
        kind = "conv"
    if kind == "pad":
        begins = [draw(st.integers(0, t - n)) for t, n in zip(target, size)]
        return _pad(draw, draft, src, tuple((b, t - n - b) for b, t, n in zip(begins, target, size)))
    if kind == "conv_conv":  # first conv keeps the size (often a 1x1), the second reaches the target
        mid = draw(st.integers(1, 6))
        first = _conv(draw, draft, src, mid, (1,) * len(size), size, max_k=draw(st.sampled_from([1, 3])))
        return _conv(draw, draft, first, cout, stride, target)
    if kind == "pad_conv":
        src = _pad(draw, draft, src)
    elif kind == "bn_conv":
        src = _bn(draw, draft, src)
    elif kind == "act_conv":  # in place on a tensor the other branches read: they see the change
        src = _act(draw, draft, src)
    out = _conv(draw, draft, src, cout, stride, target)
    if kind == "conv_bn":
        out = _bn(draw, draft, out)
    elif kind == "conv_affine":
        out = _affine(draw, draft, out)
    return out


def _sum_tree(draw, draft, operands, in_place=("method_", "augmented"), scaled_sums=True) -> int:
    """Operands summed by a random tree of add, sub and sum (``scaled_sums``: an alpha may scale
    a sum)."""
    operands = list(operands)
    while len(operands) > 1:
        kind = draw(st.sampled_from(["add", "add", "sub", "sum"]))
        i = draw(st.integers(0, len(operands) - 2))
        if kind == "sum":
            n = draw(st.integers(2, len(operands) - i))
            out = draft.add(kind, operands[i:i + n])
        else:
            ins = operands[i:i + 2]
            scales_sum = draft.ops[ins[1] - 1].kind in ("add", "sub", "sum") if ins[1] else False
            # an in-place sum writes into a tensor no other operand reads (were it one, a later
            # read would read the sum: a tree no more)
            others = {draft.aliases.storage[j] for k, j in enumerate(operands) if k != i}
            writable = in_place if draft.aliases.storage[ins[0]] not in others else ()
            n, out = 2, _binary(draw, draft, kind, ins, writable, alpha=scaled_sums or not scales_sum)
        operands[i:i + n] = [out]
    return operands[0]


def _target(draw, length, stride):
    valid = (length - 1) // stride + 1  # a 1x1 conv's output length
    return max(1, valid + draw(st.sampled_from([0, 0, 0, 1, -1])))


def _strides(draw, nd):
    return (1,) * nd if not draw(st.booleans()) else tuple(draw(st.integers(1, 2)) for _ in range(nd))


def _branches_block(draw, draft, max_channels):
    src = _pick(draw, draft)
    c, *size = draft.shapes[src]
    if draw(st.booleans()):  # shape-preserving: BN, identity and scale branches fit too
        cout, stride, target = c, (1,) * len(size), tuple(size)
    else:
        cout = c if draw(st.booleans()) is False else draw(st.integers(1, max_channels))
        stride = _strides(draw, len(size))
        target = tuple(_target(draw, n, s) for n, s in zip(size, stride))
    n = draw(st.sampled_from([2, 3, 4, 1]))
    outs = [_branch(draw, draft, src, cout, stride, target) for _ in range(n)]
    out = _sum_tree(draw, draft, outs)
    if out == src:  # a lone input branch: nothing built
        out = draft.add("identity", [src])
    if draw(st.booleans()):
        out = _act(draw, draft, out)
    return out


def _single_block(draw, draft, max_channels):
    src = _pick(draw, draft)
    c, *size = draft.shapes[src]
    kind = draw(st.sampled_from(["conv", "bn", "act", "affine", "pad", "avgpool", "identity", "shared"]))
    if kind == "shared":  # an earlier conv's weights again, on another tensor, maybe with a BN
        out = _shared_conv(draw, draft, src)
        if out is not None:
            return _bn(draw, draft, out) if draw(st.booleans()) else out
        kind = "conv"
    if kind in ("conv", "avgpool"):
        stride = tuple(draw(st.integers(1, 2)) for _ in size)
        target = tuple(_target(draw, n, s) for n, s in zip(size, stride))
        if kind == "conv":
            return _conv(draw, draft, src, draw(st.integers(1, max_channels)), stride, target)
        pooled = _avgpool_to(draw, draft, src, stride, target)
        return pooled if pooled is not None else draft.add("identity", [src])
    return {"bn": _bn, "act": _act, "affine": _affine, "pad": _pad,
            "identity": lambda draw, d, s: d.add("identity", [s])}[kind](draw, draft, src)


def _shared_conv(draw, draft, src):
    """Conv op ``j`` (an unshared one reading as many channels as ``src`` has) applied to ``src``."""
    c, *size = draft.shapes[src]
    candidates = []
    for j, op in enumerate(draft.ops, 1):
        a = op.attrs
        if op.kind != "conv" or a.get("shared") or draft.shapes[op.inputs[0]][0] != c:
            continue
        if min(out_len(n, k, s, d, b, e) for n, k, s, d, (b, e)
               in zip(size, a["k"], a["stride"], a["dilation"], a["pads"])) >= 1:
            candidates.append(j)
    if not candidates:
        return None
    j = draw(st.sampled_from(candidates))
    return draft.add("conv", [src], **{**draft.ops[j - 1].attrs, "shared": j})


def _join_block(draw, draft, max_channels):
    """A concat, or a sum, of earlier tensors of matching shapes."""
    src = _pick(draw, draft)
    c, *size = draft.shapes[src]
    if draw(st.booleans()):
        others = [i for i, s in enumerate(draft.shapes) if s[1:] == tuple(size) and i != src]
        extra = draw(st.lists(st.sampled_from(others), max_size=2)) if others else []
        if not extra and draw(st.booleans()):
            extra = [src]  # the same tensor twice
        if not extra:
            return None
        ins = [src] + extra
        if sum(draft.shapes[i][0] for i in ins) > 2 * max_channels:
            return None
        return draft.add("concat", ins)
    others = [i for i, s in enumerate(draft.shapes) if s == (c, *size) and i != src]
    if not others:
        return None
    return _binary(draw, draft, draw(st.sampled_from(["add", "sub"])), [src, draw(st.sampled_from(others))])


def _input_shape(draw, max_channels, sizes):
    """(N, C, *spatial): 2-d most often, 1-d and 3-d (smaller) too."""
    nd = draw(st.sampled_from([2, 2, 1, 3]))
    lo, hi = sizes[nd]
    return (draw(st.integers(1, 2)), draw(st.integers(1, max_channels)),
            *(draw(st.integers(lo, hi)) for _ in range(nd)))


def _spec(draw, draft, outputs) -> Spec:
    return Spec(draft.shape, tuple(draft.ops), outputs, seed=draw(st.integers(0, 2**32 - 1)),
                opset=draw(st.sampled_from([17, 11, 13, 18, 21])))


@st.composite
def graphs(draw, max_channels=6, min_size=3, max_size=9, max_blocks=8):
    """A random :class:`Spec`; sizes small enough for hundreds of examples a minute."""
    shape = _input_shape(draw, max_channels, {1: (min_size, 2 * max_size), 2: (min_size, max_size),
                                              3: (min_size, min(5, max_size))})
    draft = _Draft(shape)
    blocks = draw(st.integers(1, max_blocks))
    for _ in range(blocks):
        kind = draw(st.sampled_from(["branches", "branches", "branches", "single", "join"]))
        {"branches": _branches_block, "single": _single_block, "join": _join_block}[kind](
            draw, draft, max_channels)
    if not draft.ops:
        _branches_block(draw, draft, max_channels)
    final = [i for i in range(1, len(draft.shapes)) if not draft.aliases.stale(i)]
    sinks = [i for i in final if draft.uses[i] == 0]
    inner = [i for i in final if draft.uses[i] > 0]
    extra = draw(st.lists(st.sampled_from(inner), max_size=1, unique=True)) if inner else []
    return _spec(draw, draft, tuple(sorted(set(sinks + extra))))


# --- chains of blocks that fold, with the counts fusing must reach -------------------------------

def _odd_kernel(draw, largest):
    """An odd kernel, per dimension at most ``largest``'s."""
    return tuple(draw(st.sampled_from(range(1, k + 1, 2))) for k in largest)


def _centred_conv(draw, draft, src, cout, stride, k, groups, bias=None):
    """A conv whose output is centred on its input's positions (odd kernel, padding k // 2)."""
    return draft.add("conv", [src], out=cout, k=k, stride=stride, dilation=(1,) * len(k),
                     pads=tuple((d // 2, d // 2) for d in k), groups=groups,
                     bias=draw(st.booleans()) if bias is None else bias)


def _per_channel(draw, draft, src, in_place):
    """A per-channel (or scalar) affine of ``src``: a layer scale or shift (``in_place``: maybe
    written ``x *= c``, which fx traces as ``x = x * c``; ``x.mul_(c)`` is not lifted)."""
    return _affine(draw, draft, src, codes=("c11", "1c11", "scalar"),
                   in_place=("augmented",) if in_place else ())


def _foldable_branch(draw, draft, src, cout, stride, main_k, groups, first):
    """One branch that folds into the block's conv (kernel ``main_k``, ``groups``, ``stride``,
    centred): a conv no larger, of a multiple of ``groups``, maybe followed by a BN or a
    per-channel affine; a 1x1 -> conv or 1x1 -> average pool chain (dense blocks only); an
    average pool; and, where the block keeps the shape, the input, an identity, a BN, a
    per-channel affine. ``first``: the block's main conv."""
    c = draft.shapes[src][0]
    nd = len(stride)
    if first:
        return _centred_conv(draw, draft, src, cout, stride, main_k, groups)
    kinds = ["conv", "conv_bn", "conv_affine"] + ["pointwise_conv", "pointwise_pool"] * (groups == 1)
    if c == cout:
        kinds += ["avgpool"]
        if set(stride) == {1}:
            kinds += ["input", "identity", "bn", "affine", "bn_affine"]
    kind = draw(st.sampled_from(kinds))
    if kind == "input":
        return src
    if kind == "identity":
        return draft.add("identity", [src])
    if kind in ("bn", "bn_affine"):
        out = _bn_plain(draw, draft, src)
        return _per_channel(draw, draft, out, True) if kind == "bn_affine" else out
    if kind == "affine":  # not in place: the other branches read ``src``
        return _per_channel(draw, draft, src, False)
    if kind in ("avgpool", "pointwise_pool"):
        if kind == "pointwise_pool":
            src = _centred_conv(draw, draft, src, cout, (1,) * nd, (1,) * nd, 1, bias=False)
        # no larger than the input: torch's avg_pool3d refuses that
        k = _odd_kernel(draw, tuple(min(m, n) for m, n in zip(main_k, draft.shapes[src][1:])))
        return draft.add("avgpool", [src], k=k, stride=stride, pad=tuple(d // 2 for d in k),
                         count_include_pad=True)
    if kind == "pointwise_conv":  # a bias-free 1x1 composes exactly with a padded conv
        mid = _centred_conv(draw, draft, src, draw(st.integers(1, 6)), (1,) * nd, (1,) * nd, 1,
                            bias=False)
        return _centred_conv(draw, draft, mid, cout, stride, _odd_kernel(draw, main_k), 1)
    g = draw(st.sampled_from([d for d in _divisors(math.gcd(c, cout)) if d % groups == 0]))
    out = _centred_conv(draw, draft, src, cout, stride, _odd_kernel(draw, main_k), g)
    if kind == "conv_bn":
        return _bn_plain(draw, draft, out)
    if kind == "conv_affine":
        return _per_channel(draw, draft, out, True)
    return out


def _bn_plain(draw, draft, src):
    """A BatchNorm without hooks."""
    return draft.add("bn", [src], eps=draw(st.sampled_from(EPS)),
                     var=draw(st.sampled_from(["normal", "normal", "small", "large"])),
                     affine=not draw(st.booleans()) or draw(st.booleans()))


def _foldable_block(draw, draft, src, max_channels) -> int:
    """Branches of ``src`` that fold into one conv, summed, then a non-linearity."""
    c, *size = draft.shapes[src]
    nd = len(size)
    keep = draw(st.booleans())
    cout = c if keep else draw(st.integers(1, max_channels))
    stride = (1,) * nd if keep else _strides(draw, nd)
    main_k = tuple(draw(st.sampled_from([3, 1, 5] if nd < 3 else [3, 1])) for _ in range(nd))
    groups = draw(st.sampled_from(_divisors(math.gcd(c, cout))))
    n = draw(st.integers(1, 4))
    outs = [_foldable_branch(draw, draft, src, cout, stride, main_k, groups, i == 0) for i in range(n)]
    # ``a.add_(b)`` is not lifted (an in-place op, kept as it is); ``a += b`` traces as ``a + b``.
    # ONNX has no alpha: ``a + alpha * (b + c)`` is a Mul of a sum, which reparam does not
    # distribute over the sum's branches
    out = _sum_tree(draw, draft, outs, in_place=("augmented",), scaled_sums=False)
    fn = draw(st.sampled_from(ACTS))
    if draw(st.booleans()):  # in place: the sum's result is a tensor of its own
        functional = draw(st.booleans()) or fn in ("sigmoid", "tanh")  # no in-place modules
        return draft.add("act", [out], fn=fn, functional=functional, inplace=True)
    return draft.add("act", [out], fn=fn, functional=draw(st.booleans()))


@st.composite
def foldable_chains(draw, max_channels=6, max_blocks=4):
    """``(spec, counts)``: a chain of blocks, each a sum of branches of its input that folds
    exactly, and at no more cost, into one conv (see :func:`_foldable_branch`), followed by a
    non-linearity; ``counts``: the nodes of each kind a fused model has (``conv`` and ``act``,
    one per block; nothing else)."""
    shape = _input_shape(draw, max_channels, {1: (3, 18), 2: (3, 9), 3: (3, 5)})
    draft = _Draft(shape)
    blocks = draw(st.integers(1, max_blocks))
    src = 0
    for _ in range(blocks):
        src = _foldable_block(draw, draft, src, max_channels)
    return _spec(draw, draft, (src,)), {"conv": blocks, "act": blocks}


# --- builders -----------------------------------------------------------------------------------

def _torch_pads(pads) -> list:
    """(begin, end) per dimension as torch's padding list: the last dimension first."""
    return [p for b, e in reversed(pads) for p in (b, e)]


def _hook_after(module, args, out):
    return out * HOOK_AFTER[0] + HOOK_AFTER[1]


def _hook_before(module, args):
    return (args[0] * HOOK_BEFORE[0] - HOOK_BEFORE[1],)


def _torch_binary(kind, a, b, attrs):
    """``a + alpha * b`` (``kind`` add) or ``a - alpha * b`` (sub), spelled as ``attrs`` say."""
    import torch

    spelling = attrs.get("spelling", "operator")
    if spelling == "operator":
        return a + b if kind == "add" else a - b
    if spelling == "augmented":
        if kind == "add":
            a += b
        else:
            a -= b
        return a
    alpha = {"alpha": attrs["alpha"]} if "alpha" in attrs else {}
    if spelling == "torch":
        return (torch.add if kind == "add" else torch.sub)(a, b, **alpha)
    return getattr(a, kind + ("_" if spelling == "method_" else ""))(b, **alpha)


def _torch_affine(attrs, v, c):
    """``v`` combined with the constant ``c`` as ``attrs`` say."""
    op, spelling = attrs["op"], attrs.get("spelling")
    if spelling == "method_":
        return getattr(v, op + "_")(c)
    if spelling == "augmented":
        if op == "mul":
            v *= c
        elif op == "div":
            v /= c
        elif op == "add":
            v += c
        else:
            v -= c
        return v
    fn = {"mul": operator.mul, "div": operator.truediv, "add": operator.add, "sub": operator.sub}[op]
    y = fn(c, v) if attrs["const_first"] else fn(v, c)
    return y.squeeze(0) if attrs["shape"] == "11111" else y


def _torch_act(attrs, v):
    import torch
    import torch.nn.functional as F

    if attrs.get("inplace"):
        return {"relu": lambda: F.relu(v, inplace=True), "sigmoid": lambda: torch.sigmoid_(v),
                "tanh": lambda: v.tanh_(), "leaky_relu": lambda: F.leaky_relu_(v, LEAKY_SLOPE)}[attrs["fn"]]()
    return {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
            "leaky_relu": lambda t: F.leaky_relu(t, LEAKY_SLOPE)}[attrs["fn"]](v)


def to_module(spec: Spec, dtype=None):
    """An fx-traceable ``nn.Module`` (eval mode) computing ``spec``; float64 unless ``dtype``."""
    import torch
    from torch import nn

    nd = spec.ndim
    conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
    bn_cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
    pad_cls = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)[nd - 1]
    pool_cls = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[nd - 1]

    class RandomGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = spec
            for i, (op, p) in enumerate(zip(spec.ops, spec.params), 1):
                shape = spec.shapes[op.inputs[0]]
                a = op.attrs
                t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
                if op.kind == "conv" and a.get("shared"):
                    continue
                if op.kind == "conv":
                    sym = all(b == e for b, e in a["pads"])
                    if not sym:
                        self.add_module(f"pad{i}", pad_cls(tuple(_torch_pads(a["pads"]))))
                    padding = tuple(b for b, _ in a["pads"]) if sym else 0
                    m = conv_cls(shape[0], a["out"], a["k"], a["stride"], padding, a["dilation"], a["groups"],
                                 bias=a["bias"], dtype=torch.float64)
                    with torch.no_grad():
                        m.weight.copy_(t(p["weight"]))
                        if a["bias"]:
                            m.bias.copy_(t(p["bias"]))
                elif op.kind == "bn":
                    m = bn_cls(shape[0], eps=a["eps"], affine=a["affine"], dtype=torch.float64)
                    with torch.no_grad():
                        m.running_mean.copy_(t(p["mean"]))
                        m.running_var.copy_(t(p["var"]))
                        if a["affine"]:
                            m.weight.copy_(t(p["weight"]))
                            m.bias.copy_(t(p["bias"]))
                elif op.kind == "act" and not a["functional"]:
                    m = {"relu": lambda: nn.ReLU(inplace=a.get("inplace", False)),
                         "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                         "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE, inplace=a.get("inplace", False))}[a["fn"]]()
                elif op.kind == "avgpool":
                    m = pool_cls(a["k"], a["stride"], a["pad"], count_include_pad=a["count_include_pad"])
                elif op.kind == "pad" and not a["functional"]:
                    m = pad_cls(tuple(_torch_pads(a["pads"])))
                elif op.kind == "identity":
                    m = nn.Identity()
                elif op.kind == "affine" and a["shape"] != "scalar":
                    self.register_buffer(f"c{i}", t(p["value"]))
                    continue
                else:
                    continue
                if a.get("hook") == "after":
                    m.register_forward_hook(_hook_after)
                elif a.get("hook") == "before":
                    m.register_forward_pre_hook(_hook_before)
                self.add_module(f"op{i}", m)

        def forward(self, x):
            import torch.nn.functional as F

            t = [x]
            for i, (op, p) in enumerate(zip(self.spec.ops, self.spec.params), 1):
                ins = [t[j] for j in op.inputs]  # stale names too: an in-place op changed them
                a = op.attrs
                j = a.get("shared") or i
                if op.kind == "conv" and hasattr(self, f"pad{j}"):
                    y = getattr(self, f"op{j}")(getattr(self, f"pad{j}")(ins[0]))
                elif op.kind == "conv":
                    y = getattr(self, f"op{j}")(ins[0])
                elif op.kind == "act" and a["functional"]:
                    y = _torch_act(a, ins[0])
                elif op.kind == "pad" and a["functional"]:
                    y = F.pad(ins[0], _torch_pads(a["pads"]))
                elif op.kind == "sum":
                    y = ins[0]
                    for v in ins[1:]:
                        y = y + v
                elif op.kind in ("add", "sub"):
                    y = _torch_binary(op.kind, ins[0], ins[1], a)
                elif op.kind == "concat":
                    y = torch.cat(ins, 1)
                elif op.kind == "affine":
                    c = float(p["value"].flat[0]) if a["shape"] == "scalar" else getattr(self, f"c{i}")
                    y = _torch_affine(a, ins[0], c)
                else:
                    y = getattr(self, f"op{i}")(ins[0])
                t.append(y)
            outs = tuple(t[j] for j in self.spec.outputs)
            return outs[0] if len(outs) == 1 else outs

    m = RandomGraph().eval()
    return m if dtype is None else m.to(dtype)


def to_onnx(spec: Spec, elem=None):
    """An ``onnx.ModelProto`` computing ``spec`` in ``elem`` (an ONNX element type; FLOAT
    unless given), with static shapes and value infos for the outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if elem is None else elem
    np_t = helper.tensor_dtype_to_np_dtype(elem)
    name = lambda j: "x" if j == 0 else f"t{j}"  # noqa: E731
    nodes, inits = [], []
    spatial = list(range(2, spec.ndim + 2))

    def const(n, value, dtype=np_t):
        inits.append(numpy_helper.from_array(np.asarray(value).astype(dtype), n))
        return n

    def node(kind, ins, out, label, **attrs):
        nodes.append(helper.make_node(kind, ins, [out], name=label, **attrs))
        return out

    def affine(kind, v, c, out, label):  # v (kind) c, with c a number
        return node(kind, [v, const(f"{label}.c", [c])], out, label)

    for i, (op, p) in enumerate(zip(spec.ops, spec.params), 1):
        ins, out, a, label = [name(j) for j in spec.reads[i - 1]], name(i), op.attrs, f"n{i}_{op.kind}"
        shape = spec.shapes[op.inputs[0]]
        if a.get("hook") == "before":
            ins[0] = affine("Sub", affine("Mul", ins[0], HOOK_BEFORE[0], f"{out}_in", f"{label}_in_mul"),
                            HOOK_BEFORE[1], f"{out}_in2", f"{label}_in_sub")
        if a.get("hook") == "after":
            final, out = out, f"{out}_out"
        if op.kind == "conv":
            j = a.get("shared")
            if j:  # the initializers of conv op j
                args = ins + [f"n{j}.weight"] + ([f"n{j}.bias"] if a["bias"] else [])
            else:
                args = ins + [const(f"n{i}.weight", p["weight"])]
                if a["bias"]:
                    args.append(const(f"n{i}.bias", p["bias"]))
            node("Conv", args, out, label, kernel_shape=list(a["k"]), strides=list(a["stride"]),
                 dilations=list(a["dilation"]), group=a["groups"],
                 pads=[b for b, _ in a["pads"]] + [e for _, e in a["pads"]])
        elif op.kind == "bn":
            args = ins + [const(f"n{i}.{k}", p[k]) for k in ("weight", "bias", "mean", "var")]
            node("BatchNormalization", args, out, label, epsilon=a["eps"])
        elif op.kind == "act":
            extra = {"alpha": LEAKY_SLOPE} if a["fn"] == "leaky_relu" else {}
            kind = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "leaky_relu": "LeakyRelu"}[a["fn"]]
            node(kind, ins, out, label, **extra)
        elif op.kind == "avgpool":
            node("AveragePool", ins, out, label, kernel_shape=list(a["k"]), strides=list(a["stride"]),
                 pads=list(a["pad"]) * 2, count_include_pad=int(a["count_include_pad"]))
        elif op.kind == "pad":
            begins, ends = [b for b, _ in a["pads"]], [e for _, e in a["pads"]]
            if a["functional"] and spec.opset >= 18:  # the axes input
                args = [const(f"n{i}.pads", begins + ends, np.int64), "", const(f"n{i}.axes", spatial, np.int64)]
            else:
                args = [const(f"n{i}.pads", [0, 0] + begins + [0, 0] + ends, np.int64)]
            node("Pad", ins + args, out, label, mode="constant")
        elif op.kind == "affine":
            c = const(f"n{i}.value", p["value"].reshape(const_shape(a["shape"], shape) or (1,)))
            args = [c] + ins if a["const_first"] else ins + [c]
            if a["shape"] == "11111":
                wide = node(a["op"].capitalize(), args, f"{out}_wide", label)
                if spec.opset >= 13:
                    node("Squeeze", [wide, const(f"n{i}.axes", [0], np.int64)], out, f"{label}_squeeze")
                else:
                    node("Squeeze", [wide], out, f"{label}_squeeze", axes=[0])
            else:
                node(a["op"].capitalize(), args, out, label)
        elif op.kind in ("add", "sub") and "alpha" in a:
            scaled = affine("Mul", ins[1], a["alpha"], f"{out}_alpha", f"{label}_alpha")
            node(op.kind.capitalize(), [ins[0], scaled], out, label)
        else:
            kind = {"identity": "Identity", "add": "Add", "sub": "Sub", "sum": "Sum", "concat": "Concat"}[op.kind]
            node(kind, ins, out, label, **({"axis": 1} if kind == "Concat" else {}))
        if a.get("hook") == "after":
            affine("Add", affine("Mul", out, HOOK_AFTER[0], f"{final}_scaled", f"{label}_out_mul"),
                   HOOK_AFTER[1], final, f"{label}_out_add")
    n = spec.shape[0]
    outputs = [helper.make_tensor_value_info(name(j), elem, [n, *spec.shapes[j]]) for j in spec.outputs]
    graph = helper.make_graph(nodes, "random_graph", [helper.make_tensor_value_info("x", elem, list(spec.shape))],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)])
    model.ir_version = 8 if spec.opset <= 17 else 9 if spec.opset <= 20 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


# --- a float64 evaluator of ONNX models made of these ops -----------------------------------------

def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def eval_onnx(model, feeds: dict, dtype=None, every_tensor: bool = False):
    """Outputs of ``model`` on ``feeds`` computed with torch in ``dtype`` (float64 unless given):
    an evaluator independent of onnxruntime and of reparam, for the ops these graphs and
    reparam's output use. ``every_tensor``: a dict of every tensor computed (and fed) instead."""
    import pytest

    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from onnx import numpy_helper

    dtype = torch.float64 if dtype is None else dtype

    def tensor(a):
        a = np.asarray(a)
        return torch.from_numpy(a.copy()).to(dtype) if a.dtype.kind == "f" else torch.from_numpy(a.copy())

    env = {k: tensor(v) for k, v in feeds.items()}
    env.update({t.name: tensor(numpy_helper.to_array(t)) for t in model.graph.initializer})
    env[""] = None
    for node in model.graph.node:
        a, x = _attrs(node), [env[i] for i in node.input]
        op = node.op_type
        if op == "Conv":
            nd = x[1].ndim - 2
            pads = list(a.get("pads", [0] * 2 * nd))
            assert a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            flat = [p for k in reversed(range(nd)) for p in (pads[k], pads[k + nd])]
            conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
            y = conv(F.pad(x[0], flat), x[1], x[2] if len(x) > 2 else None,
                     a.get("strides", 1), 0, a.get("dilations", 1), a.get("group", 1))
        elif op == "BatchNormalization":
            y = F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))
        elif op in ("Add", "Sub", "Mul", "Div"):
            y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](x[0], x[1])
        elif op == "Sum":
            y = x[0]
            for v in x[1:]:
                y = y + v
        elif op == "Neg":
            y = -x[0]
        elif op == "Relu":
            y = F.relu(x[0])
        elif op == "Sigmoid":
            y = torch.sigmoid(x[0])
        elif op == "Tanh":
            y = torch.tanh(x[0])
        elif op == "LeakyRelu":
            y = F.leaky_relu(x[0], a.get("alpha", 0.01))
        elif op == "AveragePool":
            k = a["kernel_shape"]
            pads = a.get("pads", [0] * 2 * len(k))
            assert pads[:len(k)] == pads[len(k):] and not a.get("ceil_mode", 0)
            pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(k) - 1]
            y = pool(x[0], k, a.get("strides", 1), pads[:len(k)], False, bool(a.get("count_include_pad", 0)))
        elif op == "Pad":
            r = x[0].ndim
            axes = [int(v) % r for v in x[3]] if len(x) > 3 and x[3] is not None else list(range(r))
            p = [int(v) for v in x[1]]
            assert len(x) < 3 or x[2] is None or float(x[2].reshape(-1)[0]) == 0.0
            assert a.get("mode", b"constant") in (b"constant", "constant")
            full = [(0, 0)] * r
            for j, ax in enumerate(axes):
                full[ax] = (p[j], p[j + len(axes)])
            y = F.pad(x[0], [v for b, e in reversed(full) for v in (b, e)])
        elif op == "Concat":
            y = torch.cat(x, a["axis"])
        elif op == "Identity":
            y = x[0]
        elif op == "Squeeze":
            axes = [int(v) for v in x[1]] if len(x) > 1 else a["axes"]
            y = x[0].squeeze(tuple(axes))
        else:
            raise NotImplementedError(op)
        env[node.output[0]] = y
    if every_tensor:
        return {k: v for k, v in env.items() if k and k not in {t.name for t in model.graph.initializer}}
    return [env[o.name] for o in model.graph.output]
