"""FLOP counting, with ``torch.utils.flop_counter`` (through Lightning's ``measure_flops`` for forward + backward),
never by hand. At the bottom of the package: the engine counts its own FLOPs with it, and eval reports them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "measure_flops", "training_flops"]


def training_flops(
    build_net: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    batch_size: int,
    inputs: dict[str, tuple[int, ...]] | None = None,
    **static,
) -> int:
    """FLOPs of one forward + backward of ``build_net()(x, t, **inputs, **static)`` on a batch, counted on the meta
    device (no memory, no compute). ``input_shape`` is (C, H, W); ``inputs`` are further per-sample tensor inputs by
    shape (e.g. a pyramid level's ``context``), ``static`` plain arguments (its ``level``)."""
    with torch.device("meta"):
        net = build_net()
        x, t = torch.empty(batch_size, *input_shape), torch.empty(batch_size)
        kw = {k: torch.empty(batch_size, *shape) for k, shape in (inputs or {}).items()}
    return measure_flops(net, lambda: net(x, t, **kw, **static), loss_fn=lambda y: y.sum())


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running ``fn()`` once, counted by ``torch.utils.flop_counter`` (matmuls and convolutions; a
    multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
