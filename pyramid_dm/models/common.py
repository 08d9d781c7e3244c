"""What every pyramid_dm LightningModule does alike: check the data it is fitted on, read its batch size; the typed
network arguments they share."""

from __future__ import annotations

from typing import TypedDict

import lightning as L
import torch

from ..errors import UserError


def check_data_shape(module: L.LightningModule, what: str = "model") -> None:
    """Refuse data whose images differ from the ``channels`` x ``image_size`` the module was built for."""
    dm = getattr(module.trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "image_size"):
        return
    h = module.hparams
    got, want = (dm.channels, dm.image_size), (h.channels, h.image_size)
    if got != want:
        raise UserError(
            f"data {getattr(dm, 'dataset_name', '')!r} gives {got[0]}x{got[1]}x{got[1]} images but the {what} was "
            f"built for {want[0]}x{want[1]}x{want[1]} (model.image_size / model.channels)"
        )


def data_batch_size(module: L.LightningModule) -> int | None:
    """Per-rank batch size of the attached data module, if it has one."""
    dm = getattr(module.trainer, "datamodule", None)
    return getattr(getattr(dm, "hparams", None), "batch_size", None)


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> dict:
    """Lightning's scheduler entry for a linear learning-rate warm-up over ``warmup_steps`` optimizer steps."""
    warmup = max(1, warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return {"scheduler": sched, "interval": "step"}


class UNetArgs(TypedDict, total=False):
    """Network widths and layout (see :class:`pyramid_dm.nets.UNet`); image size and channels come from the data."""

    base_channels: int
    channel_mult: list[int]
    num_res_blocks: int
    attention_resolutions: list[int]
    num_heads: int
    dropout: float
    norm_groups: int


class StepAwareArgs(TypedDict, total=False):
    """A slimmable supernet trained by the sandwich rule (DDSM; :class:`pyramid_dm.engine.supernet.SandwichRule`)."""

    widths: list[float]  # width multipliers in (0, 1]; default [1, 0.75, 0.5, 0.25]
    sandwich: int  # widths per step: largest, smallest and sandwich - 2 random middle ones (default 3)
    distill: bool  # smaller widths also regress the largest width's detached output (default False)
