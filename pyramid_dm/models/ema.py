"""Exponential moving average of a network's weights, through ``torch.optim.swa_utils.AveragedModel``.

Only the network is averaged (never a frozen first stage), and its ``module`` is a bare copy of the network, so
``ema.module.state_dict()`` loads straight into a freshly built network.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_with_warmup(decay: float):
    """EMA update with the usual warm-up: effective decay min(decay, (1 + n) / (10 + n)) after n updates."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        n = float(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


def make_ema(net: nn.Module, decay: float) -> AveragedModel:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)
    return ema.requires_grad_(False)
