"""Training-speed switches of a diffusion model (``model.init_args.speed``): none changes what is optimised, so a
run may be resumed with others (``resume.RESUMABLE``). Mixed precision is Lightning's (``trainer.precision:
bf16-mixed``, ``configs/trainer/bf16.yaml``); the fused AdamW kernel is ``model.fused_optimizer``.
``configs/trainer/gpu.yaml`` turns on what pays on a GPU."""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn

from ..errors import UserError
from ..nets.checkpointing import checkpoint_activations

MATMUL_PRECISIONS = ("highest", "high", "medium")


class SpeedArgs(TypedDict, total=False):
    """How the training step runs (all off by default; compile, channels_last and activation checkpointing are checked
    against the eager fp32 step in tests/test_speed.py)."""

    compile: bool  # torch.compile the training network in place (nn.Module.compile: the state dict keeps its keys)
    compile_options: dict  # torch.compile's keyword arguments (mode, backend, dynamic, fullgraph, options)
    channels_last: bool  # NHWC weights and 4-D inputs: the layout tensor-core convolutions run in (UNet bodies)
    activation_checkpointing: bool  # recompute each block in the backward pass (:mod:`pyramid_dm.nets.checkpointing`)
    matmul_precision: str  # torch.set_float32_matmul_precision: "high" lets fp32 matmuls run in TF32 on a GPU


def _nhwc(value):
    return value.contiguous(memory_format=torch.channels_last) if torch.is_tensor(value) and value.ndim == 4 else value


def _to_channels_last(module, args, kwargs):
    return tuple(_nhwc(a) for a in args), {k: _nhwc(v) for k, v in kwargs.items()}


def check_speed(speed: SpeedArgs | None) -> SpeedArgs:
    speed = dict(speed or {})
    unknown = sorted(set(speed) - set(SpeedArgs.__annotations__))
    if unknown:
        raise UserError(f"model.speed has unknown key(s) {unknown}; known: {sorted(SpeedArgs.__annotations__)}")
    precision = speed.get("matmul_precision")
    if precision is not None and precision not in MATMUL_PRECISIONS:
        raise UserError(f"model.speed.matmul_precision {precision!r} is not one of {list(MATMUL_PRECISIONS)}")
    return speed


def apply_speed(net: nn.Module, speed: SpeedArgs | None, ema: nn.Module | None = None) -> list[str]:
    """Turn on the switches in ``speed`` for training ``net`` (in place; ``ema``, the EMA copy that samples, gets the
    same memory layout so that its update is an elementwise copy). Returns what was turned on, for the log."""
    speed, done = check_speed(speed), []
    if speed.get("matmul_precision"):
        torch.set_float32_matmul_precision(speed["matmul_precision"])
        done.append(f"matmul_precision={speed['matmul_precision']}")
    if speed.get("channels_last"):
        for module in (net, ema):
            if module is not None:
                module.to(memory_format=torch.channels_last)
                module.register_forward_pre_hook(_to_channels_last, with_kwargs=True)
        done.append("channels_last")
    if speed.get("activation_checkpointing"):
        done.append(f"activation_checkpointing({checkpoint_activations(net)} blocks)")
    if speed.get("compile"):
        net.compile(**(speed.get("compile_options") or {}))
        done.append(f"compile{speed.get('compile_options') or ''}")
    return done
