"""Checking a fused ONNX model against the original, where the rewrite happened.

Random inputs (seeded) are fed to both models (onnxruntime, or the ONNX reference
evaluator for what onnxruntime cannot run; see :mod:`reparam.check_run`); the value
of every folded block and every output is compared, with a tolerance the original's
own rounding noise sets (see :func:`verify`). Used by the CLI (``--check N``) and by
``reparam.fuse`` on ONNX models given ``example_inputs``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import BadInputError, VerificationError
from .frontends.onnx_check import first_line
from .frontends.onnx_lift import value_dims

#: default tolerance (relative to max|reference|) per ONNX element type of an output
RTOL = {TensorProto.FLOAT: 1e-4, TensorProto.DOUBLE: 1e-9, TensorProto.FLOAT16: 1e-2,
        TensorProto.BFLOAT16: 5e-2}



def input_specs(model: onnx.ModelProto) -> list[tuple[str, int, tuple]]:
    """``(name, elem_type, dims)`` of the inputs a caller must feed."""
    inits = {t.name for t in model.graph.initializer}
    return [(i.name, i.type.tensor_type.elem_type, value_dims(i) or ())
            for i in model.graph.input if i.name not in inits]


def _dtype_name(elem: int) -> str:
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:
        return TensorProto.DataType.Name(elem).lower() if elem in TensorProto.DataType.values() else "?"


def describe_inputs(model: onnx.ModelProto, only: str | None = None) -> str:
    """The inputs a caller must feed, as the model declares them: ``x float32 [N,3,224,224], ...``."""
    inits = {t.name for t in model.graph.initializer}
    parts = []
    for i in model.graph.input:
        if i.name in inits or only not in (None, i.name):
            continue
        dims = value_dims(i)
        shape = "(shape not declared)" if dims is None else _fmt_dims(dims)
        parts.append(f"{i.name} {_dtype_name(i.type.tensor_type.elem_type)} {shape}")
    return ", ".join(parts) or "none"


def random_inputs(model: onnx.ModelProto, count: int, shapes: dict | None = None,
                  seed: int = 0) -> list[dict]:
    """``count`` feeds of random values; ``shapes[name]`` fixes an input's dynamic dims.

    Dynamic dimensions without a given shape are 1 for the first (batch)
    dimension; any other one is an error naming the input. A name in ``shapes``
    that is no input of the model is an error listing the model's inputs.
    """
    shapes = dict(shapes or {})
    names = {name for name, _, _ in input_specs(model)}
    unknown = [name for name in shapes if name not in names]
    if unknown:  # before any input's own problem: a misspelt name would be reported as that
        raise BadInputError(f"--input-shape {unknown[0]}:{','.join(map(str, shapes[unknown[0]]))}: "
                            f"{unknown[0]!r} is not an input of the model; its inputs: "
                            f"{describe_inputs(model)}")
    rng = np.random.default_rng(seed)
    specs = []
    for name, elem, dims in input_specs(model):
        if name in shapes:
            shape = tuple(int(s) for s in shapes.pop(name))
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s
                                              for d, s in zip(dims, shape)):
                raise BadInputError(f"--input-shape {name}:{','.join(map(str, shape))} does not "
                                    f"match the input's shape {_fmt_dims(dims)}")
        else:
            shape = []
            for k, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif k == 0:
                    shape.append(1)
                else:
                    raise BadInputError(
                        f"input {name!r} has dynamic shape {_fmt_dims(dims)}; give its size "
                        f"with --input-shape {name}:" + ",".join(
                            str(x) if isinstance(x, int) and x > 0 else "N" for x in dims))
            shape = tuple(shape)
        try:
            np_t = helper.tensor_dtype_to_np_dtype(elem)
        except Exception as e:
            raise BadInputError(f"input {name!r} has an unsupported type {elem}") from e
        specs.append((name, np_t, shape))
    feeds = []
    for _ in range(count):
        feed = {}
        for name, np_t, shape in specs:
            if np.issubdtype(np_t, np.floating):
                feed[name] = rng.standard_normal(shape).astype(np_t)
            elif np_t == np.bool_:
                feed[name] = rng.integers(0, 2, shape).astype(np_t)
            else:
                feed[name] = rng.integers(0, 4, shape).astype(np_t)
        feeds.append(feed)
    return feeds


def format_tolerances(tolerances: dict) -> str:
    """``1e-4 for float32 outputs``, ``1e-4 for float32, 1e-2 for float16 outputs``, ...

    ``tolerances`` maps an output dtype to the tolerance used for it (None: compared exactly).
    """
    def fmt(x):
        if x == 0 or 0.1 <= abs(x) < 1e4:
            return f"{x:g}"
        mantissa, exponent = f"{x:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

    parts = [f"{'exact' if tol is None else fmt(tol)} for {dtype}"
             for dtype, tol in tolerances.items()]
    return (", ".join(parts) + " outputs") if parts else "none (no outputs)"


def _fmt_dims(dims) -> str:
    return "[" + ",".join(str(d) if d not in (None, 0) else "?" for d in dims) + "]"


#: how many times the original's own rounding noise a fused value may differ by
NOISE_FACTOR = 16
#: ... and at least this many units in the last place of the value's largest magnitude
ULP_FLOOR = 8


def _diff(a, b) -> float:
    """``max|a - b|``; a position holding the same value in both (the same infinity, or NaN
    in both) differs by 0, one where only one of them is finite or NaN by ``inf``."""
    a, b = np.asarray(a), np.asarray(b)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf
        d = np.abs(np.subtract(a, b, dtype=np.float64))  # exact for float32 and float16
    largest = float(d.max(initial=0))
    if np.isfinite(largest):  # (NaN where both are the same infinity, or either is NaN)
        return largest
    d[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    d[np.isnan(d)] = np.inf
    return float(d.max(initial=0))


def _scale(a) -> float:
    """``max|a|`` over the finite values of ``a``."""
    a = np.asarray(a)
    largest = float(np.abs(a).max(initial=0))  # exact in a's own dtype
    if np.isfinite(largest):
        return largest
    a = np.abs(np.asarray(a, np.float64))
    return float(a[np.isfinite(a)].max(initial=0))


def _block_check(block, ref: dict, noisy: dict, got) -> tuple[float, float]:
    """Raise VerificationError unless the fused value of ``block`` is the original's up to
    :data:`NOISE_FACTOR` times the original's own noise, or :data:`ULP_FLOOR` ulp of the
    largest magnitude it is computed from (``ref``, ``noisy``: the original's values)."""
    r = np.asarray(ref[block.original])
    if r.dtype.kind != "f":
        if not np.array_equal(r, got):
            raise VerificationError(f"folded block {block.label!r} (tensor {block.original!r}) "
                                    "computes other values")
        return 0.0, 0.0
    noise, diff = _diff(noisy[block.original], r), _diff(got, r)
    scale = max([_scale(r)] + [_scale(ref[n]) for n in block.inner
                               if np.asarray(ref[n]).dtype.kind == "f"])
    floor = ULP_FLOOR * float(np.finfo(r.dtype).eps) * scale
    tol = max(NOISE_FACTOR * noise, floor)
    if not diff <= tol:
        raise VerificationError(
            f"folded block {block.label!r} (tensor {block.original!r}): max|fused - original| = "
            f"{diff:.3g}, while the original itself moves by {noise:.3g} when its weights are "
            f"rounded differently (tolerance {tol:.3g}: {NOISE_FACTOR}x that, at least "
            f"{ULP_FLOOR} ulp of {scale:.3g}, the largest magnitude it is computed from)")
    return (diff / tol if tol else 0.0), tol


def verify(reference, fused, feeds: list[dict], rtol: float | None = None,
           progress=None, tolerances: dict | None = None, blocks=(),
           summary: dict | None = None) -> float:
    """Raise VerificationError unless ``fused`` matches ``reference`` on every feed.

    ``reference`` and ``fused`` are ``onnx.ModelProto`` or paths of ONNX files;
    ``blocks`` the values the fused model computes anew
    (:class:`~reparam.frontends.onnx_lower.Block`). The original also runs with its
    weights moved by one ulp (:func:`~reparam.check_run.perturb`): how far its values
    move is its own rounding noise. Each block's value must be the original's up to
    :data:`NOISE_FACTOR` times that noise (or :data:`ULP_FLOOR` ulp of the largest value it
    is computed from); each output up to ``rtol * max|ref|`` (``rtol`` given), else up to
    the largest of :data:`RTOL` of its type, the noise bound and (an output a fold
    computes) its block's tolerance. An integer output is compared exactly, unless the noise changes
    it too (it follows a discrete choice such as TopK on values that rounding reorders):
    then the blocks before it stand for it. Returns the worst output ratio.
    ``tolerances``, a dict, receives the relative tolerance used per output dtype
    (``{"float32": 1e-4}``; None for outputs compared exactly); ``summary``, a dict,
    ``blocks`` (how many were compared) and ``block_worst`` (the largest fraction of its
    tolerance a block's difference reached).

    Models run on onnxruntime, or on the ONNX reference evaluator when onnxruntime has no
    kernel for the input model (float64 convolutions); one model at a time.
    """
    from .check_run import load_model, perturb, run_feeds, run_original, with_outputs

    say = progress or (lambda msg: None)
    ref = load_model(reference)
    names = [o.name for o in ref.graph.output]
    probes = list(dict.fromkeys(names + [n for b in blocks for n in (b.original,) + b.inner]))
    say("checking: the original")
    ref = with_outputs(ref, probes, copy=ref is reference)  # (the caller's model stays as is)
    engine, refs = run_original(ref, probes, feeds)
    say("checking: the original's rounding noise")
    try:
        noisy = run_feeds(engine, perturb(ref), probes, feeds)
    except Exception as e:
        raise BadInputError(f"{engine} cannot run the input model: {first_line(e)}") from e
    del ref
    say("checking: the fused model")
    fused_probes = list(dict.fromkeys(names + [b.fused for b in blocks]))
    model = load_model(fused)
    try:
        got = run_feeds(engine, with_outputs(model, fused_probes, copy=model is fused),
                        fused_probes, feeds)
    except Exception as e:
        raise VerificationError(f"{engine} cannot run the fused model: {first_line(e)}") from e
    worst = block_worst = 0.0
    for r, p, g_ in zip(refs, noisy, got):
        bound = {}  # an output a fold computes may differ as much as its block may
        for b in blocks:
            fraction, bound[b.original] = _block_check(b, r, p, g_[b.fused])
            block_worst = max(block_worst, fraction)
        for name in names:
            worst = max(worst, _output_check(name, r[name], p[name], g_[name], rtol,
                                             tolerances, bound.get(name, 0.0)))
    if summary is not None:
        summary.update(blocks=len(blocks), block_worst=block_worst)
    return worst


def _output_check(name, ref, noisy, got, rtol, tolerances, bound: float) -> float:
    """``max|got - ref| / max|ref|``, or VerificationError above the tolerance (see
    :func:`verify`; ``bound``: what the output's block may differ by, if it is one)."""
    r, g_ = np.asarray(ref), np.asarray(got)
    if r.shape != g_.shape:
        raise VerificationError(f"output {name!r}: shape {g_.shape} != {r.shape}")
    if r.size == 0 or r.dtype.kind not in "fc":
        if r.dtype.kind not in "fc" and not np.array_equal(r, noisy):
            return 0.0  # rounding noise changes it: the blocks before it are compared
        if tolerances is not None and r.dtype.kind not in "fc":
            tolerances.setdefault(str(r.dtype), None)
        if not np.array_equal(r, g_):
            raise VerificationError(f"output {name!r} differs")
        return 0.0
    scale, diff = _scale(r), _diff(g_, r)
    if rtol is not None:
        tol = rtol
    else:
        noise = (max(NOISE_FACTOR * _diff(noisy, r), bound) / scale) if scale else 0.0
        tol = max(RTOL.get(helper.np_dtype_to_tensor_dtype(r.dtype), 1e-4), noise)
    if tolerances is not None:
        tolerances[str(r.dtype)] = max(tol, tolerances.get(str(r.dtype)) or 0.0)
    ratio = diff / scale if scale else diff
    if not ratio <= tol:
        raise VerificationError(f"output {name!r}: max|diff| = {diff:.3g} is {ratio:.3g} of "
                                f"max|ref| = {scale:.3g}, above the tolerance {tol:.3g}")
    return ratio
