"""Realistic BatchNorm statistics for models with random weights (tests, demos, benchmarks)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def realistic_bn_(model: nn.Module, make_input, steps: int = 3, generator=None) -> nn.Module:
    """Randomize every BatchNorm's affine parameters, then set its running statistics to the
    cumulative average over ``steps`` train-mode passes on ``make_input(generator)``; return
    ``model`` in eval mode.

    A fresh BN is near the identity and hides folding mistakes; statistics drawn at random
    (see :func:`reparam.models.randomize_bn_`) let activations grow or vanish layer after
    layer in a deep network, so that its outputs are dominated by rounding. Statistics
    measured on the network's own activations keep every layer normalised, as training does.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momentum = {}
    for bn in bns:
        if bn.affine:
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=generator))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=generator))
        if bn.track_running_stats:
            bn.reset_running_stats()
            momentum[bn] = bn.momentum
            bn.momentum = None  # cumulative moving average
    model.train()
    for _ in range(steps):
        model(make_input(generator))
    for bn, m in momentum.items():
        bn.momentum = m
    return model.eval()
