"""Periodic sample grids from the EMA weights, logged to W&B and saved as PNG in the run directory."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from .. import compat
from ..engine import check_sampler as check_sampler_name
from ..engine import check_steps
from ..engine.step_policy import resolve_policy
from ..engine.wrappers import Widths
from ..errors import UserError
from ..images import make_grid, save_png


def check_sampler(owner: str, sampler: str | None, steps: int | None) -> None:
    """A callback's sampler settings, checked when the config is read rather than at the first grid (None: the
    model's own, per level for a pyramid)."""
    if sampler is not None:
        check_sampler_name(sampler, owner)
    if steps is not None:
        check_steps([steps], f"{owner.rsplit('.', 1)[0]}.steps")


class SampleGrid(L.Callback):
    """After each validation (and every ``every_n_steps`` training steps if set) draw ``num_samples`` images with a
    fast sampler from a fixed seed and log them as ``samples`` (uint8, captioned with step and sampler).
    Class-conditional models cycle through the classes, one per grid row position. ``sampler`` / ``steps`` None use
    the model's own (a pyramid's per-level budgets).

    For a pyramid, also ``samples/level<l>`` (what the coarse levels alone decode to) and ``samples/coarse_to_fine``:
    one row per sample (the first ``strip_samples``), one column per level, coarse first.

    ``step_policy`` (a width policy JSON or one width, for a step-aware supernet) also draws the same noise with that
    policy, logged as ``samples/step_policy``; it is checked against the model when fitting starts (its checkpoint
    hash is not: the weights are still training)."""

    def __init__(
        self,
        num_samples: int = 64,
        sampler: str | None = None,
        steps: int | None = None,
        strip_samples: int = 8,
        every_n_steps: int | None = None,
        seed: int = 0,
        step_policy: str | None = None,
    ):
        super().__init__()
        check_sampler(f"{type(self).__name__}.sampler", sampler, steps)
        self.step_policy, self.policy = step_policy, None
        self.num_samples, self.sampler, self.steps = num_samples, sampler, steps
        self.every_n_steps, self.seed, self.strip_samples = every_n_steps, seed, strip_samples

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.step_policy is None:
            return
        engine, where = pl_module.engine, f"{type(self).__name__}.step_policy {self.step_policy}"
        try:
            self.policy = resolve_policy(self.step_policy, engine.num_levels)
            self.policy.check_model(engine.widths, engine.level_shapes, None, where)
        except ValueError as e:
            raise UserError(str(e) if where in str(e) else f"{where}: {e}") from None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.log_samples(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    @rank_zero_only
    def log_samples(self, trainer: L.Trainer, pl_module) -> None:
        model = pl_module.for_sampling(ema=True)
        labels = model.sample_labels(0, self.num_samples)
        g = torch.Generator(device=model.device).manual_seed(self.seed)
        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        images, levels = model.sample(
            self.num_samples, self.sampler, self.steps, labels=labels, generator=g, return_levels=True
        )
        seconds = time.perf_counter() - start
        step = trainer.global_step
        how = model.plan.describe(*model.plan.resolve(self.sampler, self.steps))
        caption = f"step {step} | {how} | EMA | seed {self.seed} | {seconds:.1f} s"
        grids = {"samples": make_grid(images)}
        if len(levels) > 1:
            with torch.no_grad():
                partial = [model.decode(levels[: k + 1]).clamp(-1, 1) for k in range(len(levels))]
            for k, part in enumerate(partial[:-1]):
                grids[f"samples/level{k}"] = make_grid(part)
            n = min(self.strip_samples, self.num_samples)
            strip = torch.stack([part[:n] for part in partial], dim=1).flatten(0, 1)  # sample-major
            grids["samples/coarse_to_fine"] = make_grid(strip, nrow=len(levels))
        if self.policy is not None:
            g = torch.Generator(device=model.device).manual_seed(self.seed)
            slim = model.sample(
                self.num_samples, self.sampler, self.steps, labels=labels, generator=g, wrappers=[Widths(self.policy)]
            )
            grids["samples/step_policy"] = make_grid(slim)
        pl_module.train(was_training)
        if trainer.default_root_dir:
            out = Path(trainer.default_root_dir) / "samples"
            out.mkdir(parents=True, exist_ok=True)
            for key, grid in grids.items():
                suffix = "" if key == "samples" else "-" + key.split("/")[1]
                save_png(grid, out / f"step{step:08d}{suffix}.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                for key, grid in grids.items():
                    logger.log_image(key=key, images=[grid], caption=[caption], step=compat.logging_step(trainer))
