"""Random DAGs of Rep-style layers, as a neutral description and as torch / ONNX models.

:func:`graphs` is a hypothesis strategy that draws a :class:`Spec`: an input
shape and a list of :class:`Op` (conv, BatchNorm, identity, Add/Sub/Sum trees,
non-linearities, average pooling, zero padding, per-channel affine constants,
concat), each reading earlier tensors, and the graph outputs (every tensor
nobody reads, sometimes an intermediate one too). Graphs are chains of blocks:

* *branches*: 1-4 parallel linear branches of one tensor, each aimed at one
  output shape (conv with random kernel 1-7, stride, dilation 1-3, groups
  including depthwise, symmetric or asymmetric padding, with or without bias;
  conv+BN; conv+scale; conv chains; pad+conv; BN+conv; BN; identity; scale;
  average pool; a branch through a non-linearity), summed by a random
  Add/Sub/Sum tree, sometimes followed by a non-linearity;
* a single random layer on any earlier tensor (tensors get several consumers), or an
  earlier conv applied again to another tensor (shared weights), maybe followed by a BN;
* a concat or a sum of earlier tensors of matching shapes.

Parameters are not drawn by hypothesis: op ``i`` draws its own from
``numpy.random.default_rng([seed, i])`` (float32-representable float64
values), so a spec written as a literal (its ``repr``) is a complete,
reproducible test case, and deleting an op while shrinking leaves the others'
parameters as they were.

Builders: :func:`to_module` (an fx-traceable ``nn.Module``) and :func:`to_onnx`
(an ``onnx.ModelProto`` built with ``onnx.helper``; no torch needed).
:func:`eval_onnx` evaluates an ONNX model of these ops in any torch dtype (the
float64 oracle; onnxruntime has no float64 Conv).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from hypothesis import strategies as st

ACTS = ("relu", "sigmoid", "tanh", "leaky_relu")
AFFINE_OPS = ("mul", "add", "sub", "div")
LEAKY_SLOPE = 0.125  # exact in float32
EPS = (float(np.float32(1e-5)), float(np.float32(1e-3)), 0.0625)


@dataclass(frozen=True, eq=False)
class Op:
    """One layer: ``kind``, the tensor ids it reads (0 is the graph input), attributes.

    ``conv``: out, k (kh, kw), stride, dilation, pads ((top, bottom), (left, right)), groups, bias;
    optionally shared=j: the very weights of conv op ``j`` (same attributes; torch calls the
    same module again, ONNX reads the same initializers)
    ``bn``: eps, var ('normal' | 'small' | 'large'), affine
    ``act``: fn (one of :data:`ACTS`), functional (torch builder: F.* instead of a module)
    ``avgpool``: k, stride, pad (ph, pw), count_include_pad
    ``pad``: pads ((top, bottom), (left, right)), functional (torch: F.pad; ONNX: Pad with axes)
    ``affine``: op (one of :data:`AFFINE_OPS`), shape ('c11' | '1c11' | 'scalar'), const_first
    ``identity``; ``add``, ``sub`` (two inputs); ``sum`` (n inputs); ``concat`` (n inputs)
    """

    kind: str
    inputs: tuple
    attrs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Op({self.kind!r}, {self.inputs!r}, {self.attrs!r})"


def out_len(length, k, s, d, begin, end) -> int:
    return (length + begin + end - d * (k - 1) - 1) // s + 1


def _shape_after(op: Op, shapes) -> tuple:
    c, h, w = shapes[op.inputs[0]]
    a = op.attrs
    if op.kind == "conv":
        (pt, pb), (pl, pr) = a["pads"]
        return (a["out"], out_len(h, a["k"][0], a["stride"][0], a["dilation"][0], pt, pb),
                out_len(w, a["k"][1], a["stride"][1], a["dilation"][1], pl, pr))
    if op.kind == "avgpool":
        (ph, pw) = a["pad"]
        return (c, out_len(h, a["k"][0], a["stride"][0], 1, ph, ph),
                out_len(w, a["k"][1], a["stride"][1], 1, pw, pw))
    if op.kind == "pad":
        (pt, pb), (pl, pr) = a["pads"]
        return (c, h + pt + pb, w + pl + pr)
    if op.kind == "concat":
        return (sum(shapes[i][0] for i in op.inputs), h, w)
    return (c, h, w)


@dataclass(frozen=True, eq=False)
class Spec:
    """A random graph: input ``shape`` (N, C, H, W), ``ops``, ``outputs`` (tensor ids), ``seed``
    of the parameters, and the ONNX ``opset`` to build it with."""

    shape: tuple
    ops: tuple
    outputs: tuple
    seed: int = 0
    opset: int = 17

    def __post_init__(self):
        shapes = self.shapes  # validates
        assert self.outputs and 0 not in self.outputs and len(set(self.outputs)) == len(self.outputs)
        assert all(0 < o < len(shapes) for o in self.outputs)

    def __repr__(self) -> str:
        ops = "".join(f"\n        {op!r}," for op in self.ops)
        return (f"Spec(shape={self.shape!r}, seed={self.seed!r}, opset={self.opset!r}, "
                f"outputs={self.outputs!r}, ops=({ops}\n    ))")

    @cached_property
    def shapes(self) -> list:
        """(C, H, W) of every tensor: the input, then one per op."""
        shapes = [tuple(self.shape[1:])]
        for i, op in enumerate(self.ops, 1):
            assert op.inputs and all(0 <= j < i for j in op.inputs), (i, op)
            ins = [shapes[j] for j in op.inputs]
            if op.kind in ("add", "sub", "sum"):
                assert len(set(ins)) == 1 and len(ins) == (len(ins) if op.kind == "sum" else 2), (i, op)
            if op.kind == "concat":
                assert len({s[1:] for s in ins}) == 1, (i, op)
            if op.kind == "conv":
                g = op.attrs["groups"]
                assert ins[0][0] % g == 0 and op.attrs["out"] % g == 0, (i, op)
                j = op.attrs.get("shared")
                if j:
                    first = self.ops[j - 1]
                    assert 0 < j < i and first.kind == "conv" and not first.attrs.get("shared"), (i, op)
                    assert {**first.attrs, "shared": j} == op.attrs, (i, op)
                    assert shapes[first.inputs[0]][0] == ins[0][0], (i, op)
            s = _shape_after(op, shapes)
            assert min(s) >= 1, (i, op, s)
            shapes.append(s)
        return shapes

    def rng(self, i) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    @cached_property
    def params(self) -> list:
        """Per op, a dict of float64 arrays (all float32-representable)."""
        params = []
        for i, op in enumerate(self.ops, 1):
            j = op.attrs.get("shared")
            params.append(params[j - 1] if j else _params(op, self.shapes[op.inputs[0]][0], self.rng(i)))
        return params

    def input(self, batch=None) -> np.ndarray:
        n, c, h, w = self.shape
        x = self.rng(0).standard_normal((batch or n, c, h, w))
        return x.astype(np.float32).astype(np.float64)


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def _params(op: Op, cin: int, rng) -> dict:
    a = op.attrs
    if op.kind == "conv":
        kh, kw = a["k"]
        fan_in = cin // a["groups"] * kh * kw
        p = {"weight": _f32(rng.standard_normal((a["out"], cin // a["groups"], kh, kw)) / math.sqrt(fan_in))}
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
        n = 1 if a["shape"] == "scalar" else cin
        sign = np.where(rng.random(n) < 0.3, -1.0, 1.0)
        return {"value": _f32(sign * rng.uniform(0.5, 2.0, n))}
    return {}


# --- the strategy -----------------------------------------------------------------------------

def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


class _Draft:
    """A spec being drawn: ops, shapes and how often each tensor is read."""

    def __init__(self, shape):
        self.shape = shape
        self.ops: list[Op] = []
        self.shapes = [tuple(shape[1:])]
        self.uses = [0]

    def add(self, kind, inputs, **attrs) -> int:
        op = Op(kind, tuple(inputs), attrs)
        s = _shape_after(op, self.shapes)
        assert min(s) >= 1, (op, s)
        self.ops.append(op)
        self.shapes.append(s)
        self.uses.append(0)
        for i in inputs:
            self.uses[i] += 1
        return len(self.shapes) - 1


def _pick(draw, draft) -> int:
    """An earlier tensor, most often a recent one (shrinks towards the latest)."""
    n = len(draft.shapes)
    return n - 1 - draw(st.integers(0, n - 1))


def _conv_dim(draw, length, stride, target, max_k):
    """(k, d, begin, end) of one dimension of a conv mapping ``length`` to ``target``."""
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
        if asym:
            b = draw(st.integers(0, t))
        else:
            b = t // 2
        out.append((b, t - b))
    return tuple(out)


def _groups(draw, cin, cout):
    return draw(st.sampled_from(_divisors(math.gcd(cin, cout))))


def _conv(draw, draft, src, cout, stride, target, max_k=7):
    c, h, w = draft.shapes[src]
    kh, dh, th = _conv_dim(draw, h, stride[0], target[0], max_k)
    if draw(st.booleans()):
        kw, dw, tw = _conv_dim(draw, w, stride[1], target[1], max_k)
    else:  # the same kernel in both dimensions where that reaches the target
        kw, dw = kh, dh
        lo = (target[1] - 1) * stride[1] + dw * (kw - 1) + 1 - w
        if lo + stride[1] - 1 < 0:
            kw, dw, tw = _conv_dim(draw, w, stride[1], target[1], max_k)
        else:
            tw = draw(st.integers(max(lo, 0), lo + stride[1] - 1))
    return draft.add("conv", [src], out=cout, k=(kh, kw), stride=tuple(stride), dilation=(dh, dw),
                     pads=_split(draw, (th, tw)), groups=_groups(draw, c, cout), bias=draw(st.booleans()))


def _bn(draw, draft, src):
    return draft.add("bn", [src], eps=draw(st.sampled_from(EPS)),
                     var=draw(st.sampled_from(["normal", "normal", "small", "large"])),
                     affine=not draw(st.booleans()) or draw(st.booleans()))


def _act(draw, draft, src):
    return draft.add("act", [src], fn=draw(st.sampled_from(ACTS)), functional=draw(st.booleans()))


def _affine(draw, draft, src):
    op = draw(st.sampled_from(AFFINE_OPS))
    return draft.add("affine", [src], op=op, shape=draw(st.sampled_from(["c11", "1c11", "scalar"])),
                     const_first=op != "div" and draw(st.booleans()))


def _pad(draw, draft, src, pads=None):
    if pads is None:
        pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    return draft.add("pad", [src], pads=pads, functional=draw(st.booleans()))


def _avgpool_to(draw, draft, src, stride, target):
    """An average pool reaching ``target``, or None when no small one does."""
    _, h, w = draft.shapes[src]
    options = []
    for kh in range(1, 5):
        for kw in range(1, 5):
            for ph in range(kh // 2 + 1):
                for pw in range(kw // 2 + 1):
                    if (out_len(h, kh, stride[0], 1, ph, ph), out_len(w, kw, stride[1], 1, pw, pw)) == target:
                        options.append(((kh, kw), (ph, pw)))
    if not options:
        return None
    k, pad = draw(st.sampled_from(options))
    return draft.add("avgpool", [src], k=k, stride=tuple(stride), pad=pad,
                     count_include_pad=draw(st.booleans()))


def _branch(draw, draft, src, cout, stride, target):
    """One linear (or deliberately not) branch from ``src`` to shape (cout, *target)."""
    c, h, w = draft.shapes[src]
    same = c == cout and tuple(stride) == (1, 1) and tuple(target) == (h, w)
    kinds = ["conv", "conv_bn", "conv_affine", "conv_conv", "pad_conv", "bn_conv", "act_conv"]
    if same:
        kinds += ["input", "identity", "bn", "affine", "bn_affine"]
    if c == cout:
        kinds += ["avgpool"]
        if tuple(stride) == (1, 1) and target[0] >= h and target[1] >= w:
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
        top, left = draw(st.integers(0, target[0] - h)), draw(st.integers(0, target[1] - w))
        return _pad(draw, draft, src, ((top, target[0] - h - top), (left, target[1] - w - left)))
    if kind == "conv_conv":  # first conv keeps the size (often a 1x1), the second reaches the target
        mid = draw(st.integers(1, 6))
        first = _conv(draw, draft, src, mid, (1, 1), (h, w), max_k=draw(st.sampled_from([1, 3])))
        return _conv(draw, draft, first, cout, stride, target)
    if kind == "pad_conv":
        src = _pad(draw, draft, src)
    elif kind == "bn_conv":
        src = _bn(draw, draft, src)
    elif kind == "act_conv":
        src = _act(draw, draft, src)
    out = _conv(draw, draft, src, cout, stride, target)
    if kind == "conv_bn":
        out = _bn(draw, draft, out)
    elif kind == "conv_affine":
        out = _affine(draw, draft, out)
    return out


def _sum_tree(draw, draft, operands) -> int:
    operands = list(operands)
    while len(operands) > 1:
        kind = draw(st.sampled_from(["add", "add", "sub", "sum"]))
        i = draw(st.integers(0, len(operands) - 2))
        if kind == "sum":
            n = draw(st.integers(2, len(operands) - i))
            ins = operands[i:i + n]
        else:
            n, ins = 2, operands[i:i + 2]
        operands[i:i + n] = [draft.add(kind, ins)]
    return operands[0]


def _target(draw, length, stride):
    valid = (length - 1) // stride + 1  # a 1x1 conv's output length
    return max(1, valid + draw(st.sampled_from([0, 0, 0, 1, -1])))


def _branches_block(draw, draft, max_channels):
    src = _pick(draw, draft)
    c, h, w = draft.shapes[src]
    if draw(st.booleans()):  # shape-preserving: BN, identity and scale branches fit too
        cout, stride, target = c, (1, 1), (h, w)
    else:
        cout = c if draw(st.booleans()) is False else draw(st.integers(1, max_channels))
        stride = (1, 1) if not draw(st.booleans()) else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        target = (_target(draw, h, stride[0]), _target(draw, w, stride[1]))
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
    c, h, w = draft.shapes[src]
    kind = draw(st.sampled_from(["conv", "bn", "act", "affine", "pad", "avgpool", "identity", "shared"]))
    if kind == "shared":  # an earlier conv's weights again, on another tensor, maybe with a BN
        out = _shared_conv(draw, draft, src)
        if out is not None:
            return _bn(draw, draft, out) if draw(st.booleans()) else out
        kind = "conv"
    if kind == "conv":
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        target = (_target(draw, h, stride[0]), _target(draw, w, stride[1]))
        return _conv(draw, draft, src, draw(st.integers(1, max_channels)), stride, target)
    if kind == "avgpool":
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        target = (_target(draw, h, stride[0]), _target(draw, w, stride[1]))
        pooled = _avgpool_to(draw, draft, src, stride, target)
        return pooled if pooled is not None else draft.add("identity", [src])
    return {"bn": _bn, "act": _act, "affine": _affine, "pad": _pad,
            "identity": lambda draw, d, s: d.add("identity", [s])}[kind](draw, draft, src)


def _shared_conv(draw, draft, src):
    """Conv op ``j`` (an unshared one reading as many channels as ``src`` has) applied to ``src``."""
    c, h, w = draft.shapes[src]
    candidates = []
    for j, op in enumerate(draft.ops, 1):
        a = op.attrs
        if op.kind != "conv" or a.get("shared") or draft.shapes[op.inputs[0]][0] != c:
            continue
        (pt, pb), (pl, pr) = a["pads"]
        if min(out_len(h, a["k"][0], a["stride"][0], a["dilation"][0], pt, pb),
               out_len(w, a["k"][1], a["stride"][1], a["dilation"][1], pl, pr)) >= 1:
            candidates.append(j)
    if not candidates:
        return None
    j = draw(st.sampled_from(candidates))
    return draft.add("conv", [src], **{**draft.ops[j - 1].attrs, "shared": j})


def _join_block(draw, draft, max_channels):
    """A concat, or a sum, of earlier tensors of matching shapes."""
    src = _pick(draw, draft)
    c, h, w = draft.shapes[src]
    if draw(st.booleans()):
        others = [i for i, s in enumerate(draft.shapes) if s[1:] == (h, w) and i != src]
        extra = draw(st.lists(st.sampled_from(others), max_size=2)) if others else []
        if not extra and draw(st.booleans()):
            extra = [src]  # the same tensor twice
        if not extra:
            return None
        ins = [src] + extra
        if sum(draft.shapes[i][0] for i in ins) > 2 * max_channels:
            return None
        return draft.add("concat", ins)
    others = [i for i, s in enumerate(draft.shapes) if s == (c, h, w) and i != src]
    if not others:
        return None
    return draft.add(draw(st.sampled_from(["add", "sub"])), [src, draw(st.sampled_from(others))])


@st.composite
def graphs(draw, max_channels=6, min_size=3, max_size=9, max_blocks=8):
    """A random :class:`Spec`; sizes small enough for hundreds of examples a minute."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, max_channels)),
             draw(st.integers(min_size, max_size)), draw(st.integers(min_size, max_size)))
    draft = _Draft(shape)
    blocks = draw(st.integers(1, max_blocks))
    for _ in range(blocks):
        kind = draw(st.sampled_from(["branches", "branches", "branches", "single", "join"]))
        {"branches": _branches_block, "single": _single_block, "join": _join_block}[kind](
            draw, draft, max_channels)
    if not draft.ops:
        _branches_block(draw, draft, max_channels)
    sinks = [i for i in range(1, len(draft.shapes)) if draft.uses[i] == 0]
    inner = [i for i in range(1, len(draft.shapes)) if draft.uses[i] > 0]
    extra = draw(st.lists(st.sampled_from(inner), max_size=1, unique=True)) if inner else []
    outputs = tuple(sorted(set(sinks + extra)))
    return Spec(shape, tuple(draft.ops), outputs, seed=draw(st.integers(0, 2**32 - 1)),
                opset=draw(st.sampled_from([17, 11, 13, 18, 21])))


# --- builders -----------------------------------------------------------------------------------

def to_module(spec: Spec, dtype=None):
    """An fx-traceable ``nn.Module`` (eval mode) computing ``spec``; float64 unless ``dtype``."""
    import torch
    from torch import nn

    class RandomGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = spec
            for i, (op, p) in enumerate(zip(spec.ops, spec.params), 1):
                cin = spec.shapes[op.inputs[0]][0]
                a = op.attrs
                t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
                if op.kind == "conv" and a.get("shared"):
                    continue
                if op.kind == "conv":
                    (pt, pb), (pl, pr) = a["pads"]
                    sym = pt == pb and pl == pr
                    if not sym:
                        self.add_module(f"pad{i}", nn.ZeroPad2d((pl, pr, pt, pb)))
                    m = nn.Conv2d(cin, a["out"], a["k"], a["stride"], (pt, pl) if sym else 0,
                                  a["dilation"], a["groups"], bias=a["bias"], dtype=torch.float64)
                    with torch.no_grad():
                        m.weight.copy_(t(p["weight"]))
                        if a["bias"]:
                            m.bias.copy_(t(p["bias"]))
                elif op.kind == "bn":
                    m = nn.BatchNorm2d(cin, eps=a["eps"], affine=a["affine"], dtype=torch.float64)
                    with torch.no_grad():
                        m.running_mean.copy_(t(p["mean"]))
                        m.running_var.copy_(t(p["var"]))
                        if a["affine"]:
                            m.weight.copy_(t(p["weight"]))
                            m.bias.copy_(t(p["bias"]))
                elif op.kind == "act" and not a["functional"]:
                    m = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                         "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE)}[a["fn"]]()
                elif op.kind == "avgpool":
                    m = nn.AvgPool2d(a["k"], a["stride"], a["pad"], count_include_pad=a["count_include_pad"])
                elif op.kind == "pad" and not a["functional"]:
                    (pt, pb), (pl, pr) = a["pads"]
                    m = nn.ZeroPad2d((pl, pr, pt, pb))
                elif op.kind == "identity":
                    m = nn.Identity()
                elif op.kind == "affine" and a["shape"] != "scalar":
                    shape = (cin, 1, 1) if a["shape"] == "c11" else (1, cin, 1, 1)
                    self.register_buffer(f"c{i}", t(p["value"]).reshape(shape))
                    continue
                else:
                    continue
                self.add_module(f"op{i}", m)

        def forward(self, x):
            import torch.nn.functional as F

            t = [x]
            for i, (op, p) in enumerate(zip(self.spec.ops, self.spec.params), 1):
                ins = [t[j] for j in op.inputs]
                a = op.attrs
                j = a.get("shared") or i
                if op.kind == "conv" and hasattr(self, f"pad{j}"):
                    y = getattr(self, f"op{j}")(getattr(self, f"pad{j}")(ins[0]))
                elif op.kind == "conv":
                    y = getattr(self, f"op{j}")(ins[0])
                elif op.kind == "act" and a["functional"]:
                    y = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                         "leaky_relu": lambda v: F.leaky_relu(v, LEAKY_SLOPE)}[a["fn"]](ins[0])
                elif op.kind == "pad" and a["functional"]:
                    (pt, pb), (pl, pr) = a["pads"]
                    y = F.pad(ins[0], [pl, pr, pt, pb])
                elif op.kind in ("add", "sum"):
                    y = ins[0]
                    for v in ins[1:]:
                        y = y + v
                elif op.kind == "sub":
                    y = ins[0] - ins[1]
                elif op.kind == "concat":
                    y = torch.cat(ins, 1)
                elif op.kind == "affine":
                    c = float(p["value"][0]) if a["shape"] == "scalar" else getattr(self, f"c{i}")
                    v = ins[0]
                    y = {"mul": lambda: c * v if a["const_first"] else v * c,
                         "add": lambda: c + v if a["const_first"] else v + c,
                         "sub": lambda: c - v if a["const_first"] else v - c,
                         "div": lambda: v / c}[a["op"]]()
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

    def const(n, value, dtype=np_t):
        inits.append(numpy_helper.from_array(np.asarray(value).astype(dtype), n))
        return n

    for i, (op, p) in enumerate(zip(spec.ops, spec.params), 1):
        ins, out, a, label = [name(j) for j in op.inputs], [name(i)], op.attrs, f"n{i}_{op.kind}"
        cin = spec.shapes[op.inputs[0]][0]
        if op.kind == "conv":
            (pt, pb), (pl, pr) = a["pads"]
            j = a.get("shared")
            if j:  # the initializers of conv op j
                args = ins + [f"n{j}.weight"] + ([f"n{j}.bias"] if a["bias"] else [])
            else:
                args = ins + [const(f"n{i}.weight", p["weight"])]
                if a["bias"]:
                    args.append(const(f"n{i}.bias", p["bias"]))
            nodes.append(helper.make_node("Conv", args, out, name=label, kernel_shape=list(a["k"]),
                                          strides=list(a["stride"]), dilations=list(a["dilation"]),
                                          group=a["groups"], pads=[pt, pl, pb, pr]))
        elif op.kind == "bn":
            args = ins + [const(f"n{i}.{k}", p[k]) for k in ("weight", "bias", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", args, out, name=label, epsilon=a["eps"]))
        elif op.kind == "act":
            extra = {"alpha": LEAKY_SLOPE} if a["fn"] == "leaky_relu" else {}
            kind = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "leaky_relu": "LeakyRelu"}[a["fn"]]
            nodes.append(helper.make_node(kind, ins, out, name=label, **extra))
        elif op.kind == "avgpool":
            ph, pw = a["pad"]
            nodes.append(helper.make_node("AveragePool", ins, out, name=label, kernel_shape=list(a["k"]),
                                          strides=list(a["stride"]), pads=[ph, pw, ph, pw],
                                          count_include_pad=int(a["count_include_pad"])))
        elif op.kind == "pad":
            (pt, pb), (pl, pr) = a["pads"]
            if a["functional"] and spec.opset >= 18:  # the axes input
                args = [const(f"n{i}.pads", [pt, pl, pb, pr], np.int64), "",
                        const(f"n{i}.axes", [2, 3], np.int64)]
            else:
                args = [const(f"n{i}.pads", [0, 0, pt, pl, 0, 0, pb, pr], np.int64)]
            nodes.append(helper.make_node("Pad", ins + args, out, name=label, mode="constant"))
        elif op.kind == "affine":
            shape = {"c11": (cin, 1, 1), "1c11": (1, cin, 1, 1), "scalar": (1,)}[a["shape"]]
            c = const(f"n{i}.value", p["value"].reshape(shape))
            args = [c] + ins if a["const_first"] else ins + [c]
            nodes.append(helper.make_node(a["op"].capitalize(), args, out, name=label))
        else:
            kind = {"identity": "Identity", "add": "Add", "sub": "Sub", "sum": "Sum", "concat": "Concat"}[op.kind]
            nodes.append(helper.make_node(kind, ins, out, name=label, **({"axis": 1} if kind == "Concat" else {})))
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
            y = F.conv2d(F.pad(x[0], flat), x[1], x[2] if len(x) > 2 else None,
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
            y = F.avg_pool2d(x[0], k, a.get("strides", 1), pads[:len(k)], False,
                             bool(a.get("count_include_pad", 0)))
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
        else:
            raise NotImplementedError(op)
        env[node.output[0]] = y
    if every_tensor:
        return {k: v for k, v in env.items() if k and k not in {t.name for t in model.graph.initializer}}
    return [env[o.name] for o in model.graph.output]
