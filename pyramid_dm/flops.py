"""FLOP counting with ``torch.utils.flop_counter``, never by hand. At the bottom of the package: the engine counts its
own FLOPs with it, and eval reports them.

:func:`measure_flops` is Lightning's ``lightning.fabric.utilities.throughput.measure_flops`` (forward, then backward
of ``loss_fn(output)``, inside one ``FlopCounterMode``), written out here so that the engine stays Lightning-free."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "measure_flops", "training_flops"]


def measure_flops(model: nn.Module, forward_fn: Callable[[], torch.Tensor], loss_fn=None) -> int:
    """FLOPs of ``forward_fn()`` and, with ``loss_fn``, of the backward of ``loss_fn(output)``."""
    with FlopCounterMode(display=False) as counter:
        out = forward_fn()
        if loss_fn is not None:
            loss_fn(out).backward()
    return counter.get_total_flops()


def training_flops(
    build_net: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    batch_size: int,
    inputs: dict[str, tuple[int, ...]] | None = None,
    backward: bool = True,
    **static,
) -> int:
    """FLOPs of one forward + backward of ``build_net()(x, t, **inputs, **static)`` on a batch, counted on the meta
    device (no memory, no compute). ``input_shape`` is (C, H, W); ``inputs`` are further per-sample tensor inputs by
    shape (e.g. a pyramid level's ``context``), ``static`` plain arguments (its ``level``)."""
    with torch.device("meta"):
        net = build_net()
        x, t = torch.empty(batch_size, *input_shape), torch.empty(batch_size)
        kw = {k: torch.empty(batch_size, *shape) for k, shape in (inputs or {}).items()}
    return measure_flops(net, lambda: net(x, t, **kw, **static), loss_fn=(lambda y: y.sum()) if backward else None)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running ``fn()`` once, counted by ``torch.utils.flop_counter`` (matmuls and convolutions; a
    multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
