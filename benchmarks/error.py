"""Numerical error of the folding: reparam (float64 math, one rounding to float32) against
the hand-written conversion computed in float32 (as the authors' released code does).

Both converted models keep float32 weights. Each is evaluated in float64
arithmetic (its float32 weights widened exactly) on the same inputs as a float64
copy of the original training model, the reference: so the error measured is
that of the conversion alone, not of float32 inference. Error is
``max|y - y_ref| / max|y_ref|`` over a batch of random inputs.
"""
from __future__ import annotations

import copy

import torch


def _rel(y, ref) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def measure(title: str, training, hw: int, batch: int = 4) -> dict:
    import reparam
    from models import handwritten_f32

    torch.set_num_threads(1)
    fused = reparam.fuse(training)
    hand = handwritten_f32(title, training)
    x = torch.randn(batch, 3, hw, hw, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    with torch.no_grad():
        ref = copy.deepcopy(training).double()(x)
        out = {"model": title,
               "reparam": _rel(copy.deepcopy(fused).double()(x), ref),
               "hand_f32": _rel(copy.deepcopy(hand).double()(x), ref)}
        # and in float32 inference, for scale: what a user sees end to end
        out["reparam_f32_inference"] = _rel(fused(x.float()).double(), ref)
    return out
