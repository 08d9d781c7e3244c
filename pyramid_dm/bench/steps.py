"""``python -m pyramid_dm bench steps --config A.yaml [--config B.yaml ...] [overrides]``: seconds per 1000 training
steps of each config, as ``fit`` runs them (its data loader, batch size, precision, optimizer and EMA), without
validation, sample callbacks, checkpoints or W&B. The first ``--warmup`` steps are not timed.

Runs go under a temporary ``exp.root``; each run's weights are saved there as ``<exp.name>/checkpoints/last.ckpt``, so
a stage-two config listed after its stage-one config (``configs/own/autoencoder_64.yaml`` then ``latent_64.yaml``)
finds the autoencoder it names.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ProgressBar


class StepClock(Callback):
    """Wall-clock from the end of step ``warmup`` to the end of step ``warmup + steps`` (device synchronised)."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.start, self.seconds = warmup, steps, None, None

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps and self.seconds is None:
            self._sync(trainer)
            self.seconds = time.perf_counter() - self.start


def config_cli(config: str, overrides: list[str], extra: list[str]):
    """The LightningCLI of ``config`` with ``overrides`` (then ``extra``, after the config's defaults are expanded),
    instantiated as ``fit`` would build it and not run."""
    from ..cli import expand_defaults, make_cli, quiet

    quiet()
    args = expand_defaults(["--config", config, *overrides]) + extra
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # args are ours, argv is bench's
    return make_cli(subcommands=False, save_config_callback=None, run=False, args=args)


def time_config(config: str, root: Path, steps: int, warmup: int, overrides: list[str]) -> dict:
    args = ["--exp.root", str(root), "--trainer.max_steps", str(warmup + steps), "--trainer.logger", "false"]
    args += ["--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = config_cli(config, overrides, args)
    trainer, clock = cli.trainer, StepClock(warmup, steps)
    trainer.callbacks[:] = [cb for cb in trainer.callbacks if isinstance(cb, ProgressBar)] + [clock]
    cuda = torch.cuda.is_available() and trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(cli.model, datamodule=cli.datamodule)
    trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    batch = cli.datamodule.hparams.batch_size
    row = {
        "config": config,
        "family": getattr(cli.model, "family", "?"),
        "image_size": cli.datamodule.image_size,
        "batch_size": batch,
        "precision": str(trainer.precision),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "steps_timed": steps,
        "seconds_per_1000_steps": 1000 * clock.seconds / steps,
        "images_per_s": batch * steps / clock.seconds,
    }
    if cuda:
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def add_parser(sub) -> None:
    s = sub.add_parser("steps", help="seconds per 1000 training steps of configs, as fit runs them")
    s.add_argument("--config", action="append", required=True, help="a config to time (repeat for several)")
    s.add_argument("--steps", type=int, default=20, help="steps timed per config")
    s.add_argument("--warmup", type=int, default=3, help="steps run first, not timed")
    s.add_argument("--json", type=Path, help="also write the rows here")
    s.add_argument("overrides", nargs="*", help="fit options for every config, after --")


def bench_steps(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pyramid_dm-bench-steps-") as tmp:
        for config in args.config:
            row = time_config(config, Path(tmp), args.steps, args.warmup, args.overrides)
            rows.append(row)
            print(
                f"{config}: {row['seconds_per_1000_steps']:.0f} s / 1000 steps ({row['images_per_s']:.0f} images/s, "
                f"batch {row['batch_size']}, {row['image_size']}px, {row['device']})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows
