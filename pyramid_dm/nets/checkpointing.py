"""Activation checkpointing of a network's blocks (Chen et al. 2016, "Training deep nets with sublinear memory
cost"): a checkpointed block keeps only its inputs during the forward pass and runs again in the backward pass, so
a step holds about one block's activations instead of every block's, for about one more forward of compute.

A network names the modules worth checkpointing in its class attribute ``checkpoint_units`` (a tuple of module
classes: UNet's residual and attention blocks, DiT's blocks, the hourglass's layers); a user's registered network
declares its own. Each such module is wrapped by PyTorch's ``checkpoint_wrapper`` (the one FSDP and torchtitan use;
it keeps the state dict's keys unchanged, so a checkpoint written with checkpointing on loads without it and back).

The width of a slimmable network is a context variable read at call time (:mod:`.slimmable`); the backward pass
recomputes a block outside the caller's ``use_width`` block, so the recomputation runs under the width the forward
pass ran at (``context_fn``), not the default full width.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .slimmable import current_width, use_width


def _checkpoint(function, *args, **kwargs):
    if not torch.is_grad_enabled():  # sampling, validation: nothing is kept for a backward pass anyway
        return function(*args, **kwargs)
    if torch.compiler.is_compiling():  # traced once per width: the width is a constant of the traced graph
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    width = current_width()
    contexts = lambda: (contextlib.nullcontext(), use_width(width))  # noqa: E731
    return checkpoint(function, *args, use_reentrant=False, context_fn=contexts, **kwargs)


def checkpoint_activations(net: nn.Module) -> int:
    """Wrap every module of ``net`` whose class is in ``net.checkpoint_units`` for activation checkpointing (in
    place); returns how many were wrapped. A network that declares no units is an error naming it."""
    units = getattr(net, "checkpoint_units", None)
    if not units:
        raise UserError(
            f"model.speed.activation_checkpointing: the network {type(net).__name__} declares no checkpoint_units "
            "(a tuple of its block classes); add one to its class, or turn activation checkpointing off"
        )
    if any(isinstance(m, CheckpointWrapper) for m in net.modules()):
        return 0  # already wrapped (a second fit of the same module)
    wrap = lambda m: checkpoint_wrapper(m, checkpoint_fn=_checkpoint)  # noqa: E731
    apply_activation_checkpointing(net, checkpoint_wrapper_fn=wrap, check_fn=lambda m: isinstance(m, units))
    return sum(isinstance(m, CheckpointWrapper) for m in net.modules())
