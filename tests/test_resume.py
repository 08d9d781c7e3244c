"""Resuming without being told how: mid-step checkpoints, the newest checkpoint, the job-derived W&B run id.

The end-to-end requeue on a real Slurm cluster is in test_slurm.py; these check the pieces on CPU in seconds.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from pyramid_dm.resume import StepBoundaryResume, newest_checkpoint, slurm_run_id


class Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)


class SaveAt(Callback):
    """Saves in batch ``at``: inside its optimizer step (where Lightning's SLURM requeue handler may run), at its
    start (where RequeueAtStepBoundary runs that handler), or at its end."""

    def __init__(self, path, at: int, where: str):
        self.path, self.at, self.where = path, at, where

    def save(self, trainer):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.at:
            trainer.save_checkpoint(self.path)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.where == "inside the step":
            self.save(trainer)

    def on_train_batch_start(self, trainer, *args):
        if self.where == "at the batch start":
            self.save(trainer)

    def on_train_batch_end(self, trainer, *args):
        if self.where == "at the batch end":
            self.save(trainer)


class ValidationSteps(Callback):
    def __init__(self):
        self.steps = []

    def on_validation_end(self, trainer, pl_module):
        self.steps.append(trainer.global_step)


class TrainSteps(Logger):
    """Records the step each training row is logged at (what W&B shows as trainer/global_step)."""

    name, version = "steps", 0

    def __init__(self):
        super().__init__()
        self.steps = []

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        if "train/loss" in metrics:
            self.steps.append(step)


def trainer(root, max_steps, *callbacks, logger=False):
    return Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True), *callbacks],
    )


# Saved after a validation step (at=5: step 4 done) or after a plain one (at=6: step 5 done). At the end of batch 6
# its validation has not run yet, and Lightning's own restart skips it, so that pair is not a case of this test.
@pytest.mark.parametrize(
    ("where", "at"),
    [(w, a) for w in ("inside the step", "at the batch start") for a in (5, 6)] + [("at the batch end", 5)],
)
def test_a_checkpoint_saved_during_a_batch_resumes_on_the_same_step_grid(tmp_path, where, at):
    mid = tmp_path / "hpc_ckpt_1.ckpt"
    trainer(tmp_path / "a", 7, SaveAt(mid, at=at, where=where)).fit(Tiny(), loader(), loader())
    state = torch.load(mid, weights_only=False)
    progress = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert progress["ready"] == at and progress["completed"] == at - 1  # batch `at` not counted as finished
    assert state["global_step"] == (at if where == "at the batch end" else at - 1)  # else batch `at` runs (again)

    vals, logged = ValidationSteps(), TrainSteps()
    resumed = trainer(tmp_path / "b", 10, StepBoundaryResume(), vals, logger=logged)
    resumed.fit(Tiny(), loader(), loader(), ckpt_path=mid)
    # Validation (and its checkpoint) falls on the same steps as in an uninterrupted run, the last step is saved, and
    # the training rows go on from the checkpoint's step (batch n + 1 logs at step n) without a gap or a repeat.
    assert vals.steps == [6, 8, 10]
    assert logged.steps == list(range(state["global_step"], 10))
    assert torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 10
    progress = resumed.fit_loop.epoch_loop.batch_progress.total
    assert progress.ready == progress.completed == 10


def test_a_checkpoint_saved_at_a_step_boundary_is_left_as_it_is(tmp_path):
    trainer(tmp_path / "a", 4).fit(Tiny(), loader(), loader())
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    before = repr(state["loops"])
    StepBoundaryResume().on_load_checkpoint(None, None, state)
    assert repr(state["loops"]) == before


def test_newest_checkpoint_is_the_last_written_complete_file(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    assert newest_checkpoint(run, ckpts) is None
    for i, path in enumerate([ckpts / "last.ckpt", run / "hpc_ckpt_1.ckpt", ckpts / "best-step3.ckpt"]):
        path.write_bytes(b"x")
        os.utime(path, ns=(time.time_ns(), 1_000_000_000 * (i + 1)))
    (ckpts / ".last.ckpt.partial").write_bytes(b"half")  # a write in progress is never chosen
    assert newest_checkpoint(run, ckpts) == ckpts / "best-step3.ckpt"
    os.utime(run / "hpc_ckpt_1.ckpt", ns=(time.time_ns(), 10_000_000_000))
    assert newest_checkpoint(run, ckpts, None) == run / "hpc_ckpt_1.ckpt"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"SLURM_JOB_ID": "123"}, "exp-123"),
        ({"SLURM_JOB_ID": "123", "SLURM_CLUSTER_NAME": "jean zay"}, "exp-jean-zay-123"),
        ({"SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": "7"}, "exp-123_7"),
    ],
)
def test_wandb_run_id_follows_the_job(monkeypatch, env, expected):
    for key in ("SLURM_JOB_ID", "SLURM_CLUSTER_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert slurm_run_id("exp") == expected


def test_a_long_wandb_run_id_is_cut_and_kept_unique(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    a, b = slurm_run_id("x" * 80 + "a"), slurm_run_id("x" * 80 + "b")
    assert len(a) == len(b) == 64 and a != b
