"""Cost accounting measured with ``torch.utils.flop_counter`` (through Lightning's ``measure_flops``), never by hand."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch import nn


def training_flops(build_net: Callable[[], nn.Module], input_shape: tuple[int, ...], batch_size: int) -> int:
    """FLOPs of one forward + backward of ``build_net()(x, t)`` on a batch, counted on the meta device (no memory,
    no compute). ``input_shape`` is (C, H, W)."""
    with torch.device("meta"):
        net = build_net()
        x, t = torch.empty(batch_size, *input_shape), torch.empty(batch_size)
    return measure_flops(net, lambda: net(x, t), loss_fn=lambda y: y.sum())
