"""Periodic sample grids from the EMA weights, logged to W&B and saved as PNG in the run directory."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..diffusion import SAMPLERS
from ..errors import UserError
from ..images import make_grid, save_png


def check_sampler(owner: str, sampler: str, steps: int) -> None:
    """A callback's sampler settings, checked when the config is read rather than at the first grid."""
    if sampler not in SAMPLERS:
        raise UserError(f"{owner} {sampler!r} is not one of {sorted(SAMPLERS)}")
    if int(steps) < 1:
        raise UserError(f"{owner.rsplit('.', 1)[0]}.steps must be >= 1, got {steps}")


class SampleGrid(L.Callback):
    """After each validation (and every ``every_n_steps`` training steps if set) draw ``num_samples`` images with a
    fast sampler from a fixed seed and log them as ``samples`` (uint8, captioned with step and sampler).
    Class-conditional models cycle through the classes, one per grid row position."""

    def __init__(
        self,
        num_samples: int = 64,
        sampler: str = "dpmpp_2m",
        steps: int = 20,
        every_n_steps: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        check_sampler(f"{type(self).__name__}.sampler", sampler, steps)
        self.num_samples, self.sampler, self.steps = num_samples, sampler, steps
        self.every_n_steps, self.seed = every_n_steps, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.log_samples(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    @rank_zero_only
    def log_samples(self, trainer: L.Trainer, pl_module) -> None:
        k = getattr(pl_module, "num_classes", 0)
        labels = torch.arange(self.num_samples) % k if k else None
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        images = pl_module.sample(self.num_samples, self.sampler, self.steps, labels=labels, generator=g)
        pl_module.train(was_training)
        seconds = time.perf_counter() - start
        grid = make_grid(images)
        step = trainer.global_step
        caption = f"step {step} | {self.sampler} {self.steps} steps | EMA | seed {self.seed} | {seconds:.1f} s"
        if trainer.default_root_dir:
            out = Path(trainer.default_root_dir) / "samples"
            out.mkdir(parents=True, exist_ok=True)
            save_png(grid, out / f"step{step:08d}.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[grid], caption=[caption], step=step)
