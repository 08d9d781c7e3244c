"""FLOP counting with ``torch.utils.flop_counter``, never by hand. At the bottom of the package: the engine counts its
own FLOPs with it, and eval reports them.

:func:`measure_flops` is Lightning's ``lightning.fabric.utilities.throughput.measure_flops`` (forward, then backward
of ``loss_fn(output)``, inside one ``FlopCounterMode``), written out here so that the engine stays Lightning-free.

``flop_counter`` has no formula for the CPU kernel of ``scaled_dot_product_attention``
(``_scaled_dot_product_flash_attention_for_cpu``): attention on the CPU would count 0 FLOPs (on the meta device and on
GPUs its other kernels are counted). :func:`counter` adds that kernel, forward and backward, counted as the meta
device counts attention (where it runs as plain matmuls, and where training FLOPs are counted): two matmuls forward,
four backward (no recomputed scores), so the same network counts the same on the CPU and on the meta device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "measure_flops", "training_flops"]


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    (b, h, q_len, e), k_len, ev = query, key[-2], value[-1]
    return 2 * b * h * q_len * k_len * (e + ev)  # scores = q k^T, out = scores v


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    (b, h, q_len, e), k_len, ev = query, key[-2], value[-1]
    return 4 * b * h * q_len * k_len * (e + ev)  # d scores and dV; dQ and dK


def counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts attention's CPU kernel."""
    aten = torch.ops.aten
    mapping = {}
    for name, formula in [
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward),
    ]:
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = formula
    return FlopCounterMode(display=False, custom_mapping=mapping)


def measure_flops(model: nn.Module, forward_fn: Callable[[], torch.Tensor], loss_fn=None) -> int:
    """FLOPs of ``forward_fn()`` and, with ``loss_fn``, of the backward of ``loss_fn(output)``."""
    with counter() as counted:
        out = forward_fn()
        if loss_fn is not None:
            loss_fn(out).backward()
    return counted.get_total_flops()


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
    multiply-add counts 2; attention too, :func:`counter`)."""
    with counter() as counted:
        fn()
    return counted.get_total_flops()
