"""Resuming a training without being told how: a requeued SLURM job, its checkpoint and its W&B run.

Lightning's own SLURM support saves ``<run dir>/hpc_ckpt_<n>.ckpt`` on the requeue signal (``--signal=SIGUSR1@90``),
requeues the job and, when the job starts again with no ``ckpt_path``, loads the highest-numbered ``hpc_ckpt``. The
gaps it leaves are closed here; its handler still does the saving and the requeueing:

- the handler runs wherever the signal lands, on each rank separately, and saves through a collective (a barrier):
  one rank can wait in that barrier while another waits in the step's gradient all-reduce, and the job hangs until
  its time limit (seen on the test cluster). :class:`RequeueAtStepBoundary` holds the signal until the next step
  begins and runs Lightning's handler there on every rank together, once any rank has it;
- a checkpoint saved inside a step counts the interrupted batch as started but not finished. Lightning restores
  that as is: the batch counter then runs one ahead of ``global_step`` for the rest of the run, validation and
  checkpoints fall one step early, and the final step is never saved. :class:`StepBoundaryResume` rolls such a
  checkpoint back to the last finished step before it is loaded;
- a job requeued *without* that signal (``scontrol requeue``, preemption, a node failure) has no ``hpc_ckpt``, or
  an older one than its ``last.ckpt``: it resumes from the newest checkpoint of the run (:func:`newest_checkpoint`);
- the W&B run id is derived from the job (:func:`slurm_run_id`), so a requeued job continues the same run.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from . import compat
from .errors import UserError

HPC_PATTERN = "hpc_ckpt_*.ckpt"
INTERRUPTED_KEY = "pyramid_dm_interrupted"  # in a checkpoint saved by callbacks.stopping.StopOnSignal


def slurm_requeued() -> bool:
    """True in a SLURM job that was requeued (Slurm sets ``SLURM_RESTART_COUNT`` >= 1 on every restart)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def slurm_job_id() -> str | None:
    """The job's id as ``scontrol requeue`` knows it: ``<array job>_<task>`` for an array element, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def slurm_run_id(name: str) -> str | None:
    """A W&B run id that a requeued job gets again: ``<experiment>-<cluster>-<job id>``, or None outside SLURM.

    The experiment name keeps two trainings in one job apart; the cluster name keeps job ids of two clusters apart.
    W&B allows letters, digits, ``-`` and ``_`` (at most 64 characters); anything else becomes ``-``, and a longer id
    is cut and given a hash of the whole.
    """
    job = slurm_job_id()
    if job is None:
        return None
    parts = [name, os.environ.get("SLURM_CLUSTER_NAME", ""), job]
    run_id = re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(p for p in parts if p)).strip("-")
    if len(run_id) > 64:
        run_id = f"{run_id[:55]}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}"
    return run_id


def newest_checkpoint(*dirs: str | Path) -> Path | None:
    """The most recently written ``*.ckpt`` in ``dirs`` (not recursive), or None.

    Checkpoints are written under a hidden temporary name and renamed into place (:mod:`pyramid_dm.checkpoint_io`),
    so the newest file is always a complete one.
    """
    found = [p for d in dirs if d and Path(d).is_dir() for p in Path(d).glob("*.ckpt") if p.is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


class StepBoundaryResume(Callback):
    """Loads a checkpoint saved during a training batch, before its end, as the step boundary before it.

    Lightning's requeue handler (run at the start of a batch by :class:`RequeueAtStepBoundary`, or wherever the signal
    lands) saves batch ``n + 1`` as begun but only ``n`` completed (with ``n`` optimizer steps). Every progress counter
    of the training loop is set back to the completed count, so the interrupted batch simply runs again. Lightning's
    logging step (:data:`pyramid_dm.compat.LOGGING_STEP`) is then restored to the checkpoint's value, ``n``, at the
    first batch: how Lightning itself adjusts it on restart depends on whether step ``n`` was a validation step.
    Checkpoints saved at or after the end of a batch (ModelCheckpoint's, during validation) are left to Lightning.
    """

    def __init__(self):
        self._logging_step: int | None = None

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get(INTERRUPTED_KEY):  # saved after step n by a stop signal: the next row is step n's
            self._logging_step = int(checkpoint["global_step"])
            return
        loop = compat.fit_loop_state(checkpoint)
        batches = loop.get(compat.BATCH_PROGRESS, {}).get("total", {})
        if not batches or batches.get("processed", 0) >= batches.get("ready", 0):
            return
        for progress in compat.training_progress(loop):
            _roll_back(progress)
        self._logging_step = compat.checkpoint_logging_step(loop)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._logging_step is not None:
            compat.set_logging_step(trainer, self._logging_step)
            self._logging_step = None


def _roll_back(progress: dict) -> None:
    """Set ready/started/processed back to completed in every tracker nested in a Lightning progress state dict."""
    if "completed" in progress:
        for key in ("ready", "started", "processed"):
            if key in progress:
                progress[key] = progress["completed"]
    for value in progress.values():
        if isinstance(value, dict):
            _roll_back(value)


class RequeueAtStepBoundary(Callback):
    """Runs Lightning's SLURM requeue handler between two training steps, on all ranks at once.

    While training, the requeue signal only marks itself pending. Before every training batch the ranks agree (one
    integer all-reduced, max) whether any of them has it; if so, every rank calls the handler Lightning installed, at
    the same point of the same step, so its checkpoint is consistent, every row of the finished steps is logged, and
    its barrier meets the others'. Outside SLURM, or with Lightning's auto-requeue off, it does nothing.
    """

    def __init__(self):
        self._signum: int | None = None
        self._handler = None
        self._pending = False

    def on_train_start(self, trainer, pl_module) -> None:
        env = getattr(trainer.strategy, "cluster_environment", None)
        if not isinstance(env, SLURMEnvironment) or not env.auto_requeue or env.requeue_signal is None:
            return
        handler = compat.requeue_handler(env.requeue_signal)
        if handler is None:
            return
        self._signum, self._handler = env.requeue_signal, handler
        signal.signal(self._signum, self._defer)

    def _defer(self, signum, frame) -> None:
        self._pending = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # At the start of batch n + 1, step n is finished, logged and counted; the checkpoint then holds batch n + 1
        # as begun, which StepBoundaryResume turns back into "n steps done".
        if self._handler is None:
            return
        flag = torch.tensor([int(self._pending)], device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        if flag.item():
            self._pending = False
            rank_zero_info(f"requeue signal: handled at step {trainer.global_step}, on every rank")
            self._handler(self._signum, None)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._handler is not None:
            signal.signal(self._signum, self._handler)
            self._handler = None


class TrainingLeft(Callback):
    """A resumed run with nothing left to train says so: ``max_time`` already spent is an error naming it (Lightning
    would end at once, exit code 0, without a word); ``max_steps`` already reached is a notice. Checked once the
    checkpoint is restored (``on_fit_start``, where Lightning's Timer checks it too; training itself never starts)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        for cb in trainer.callbacks:
            if isinstance(cb, Timer) and cb.time_remaining() is not None and cb.time_remaining() <= 0:
                spent = datetime.timedelta(seconds=round(cb.time_elapsed()))
                budget = datetime.timedelta(seconds=round(cb.time_elapsed() + cb.time_remaining()))
                raise UserError(
                    f"--trainer.max_time {budget}: the run has already trained for {spent} of it (the time is counted "
                    "across resumes); raise trainer.max_time to train on"
                )
        if 0 < trainer.max_steps <= trainer.global_step:
            rank_zero_warn(
                f"trainer.max_steps is {trainer.max_steps} and the run is at step {trainer.global_step} already: "
                "nothing left to train (raise --trainer.max_steps to train on)"
            )


def interrupt_checkpoint_path(trainer) -> Path:
    """Where a stopped run saves: the ``last`` checkpoint of its ModelCheckpoint, else ``interrupted.ckpt``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath and cb.save_last:
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "interrupted.ckpt"


class TidyCheckpoints(Callback):
    """After a resume, removes what an interrupted save left in the checkpoint folders (rank 0): ``.partial`` files,
    and a ``ModelCheckpoint``'s own top-k files that its state no longer tracks (a kill between writing a new best
    checkpoint and deleting the one it replaced leaves both; Lightning also keeps the file a run resumed from). Only
    files named by that callback's ``filename`` pattern are considered, and an untracked file only once a newer
    checkpoint exists; everything else is left alone. So after any kill and resume the folder holds what
    ``save_top_k`` and ``save_last`` promise (the resume source until the first checkpoint after it)."""

    def __init__(self):
        self._seen = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.tidy(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        state = [(cb.last_model_path, tuple(cb.best_k_models)) for cb in trainer.checkpoint_callbacks]
        if state != self._seen:  # a checkpoint was saved since the last look
            self._seen = state
            self.tidy(trainer)

    @staticmethod
    def tidy(trainer) -> None:
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.dirpath or not Path(cb.dirpath).is_dir():
                continue
            folder = Path(cb.dirpath)
            tracked = [Path(p) for p in [*cb.best_k_models, cb.best_model_path, cb.last_model_path] if p]
            keep = {p.resolve() for p in tracked}
            newest = max((p.stat().st_mtime_ns for p in tracked if p.is_file()), default=0)
            stale = list(folder.glob(".*.partial"))
            prefix = (cb.filename or "").split("{")[0]
            if prefix and cb.save_top_k >= 0:
                last = f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
                mine = [p for p in folder.glob(f"{prefix}*{cb.FILE_EXTENSION}") if p.name != last]
                stale += [p for p in mine if p.resolve() not in keep and p.stat().st_mtime_ns < newest]
            for path in stale:
                rank_zero_info(f"removing {path}: left by an interrupted checkpoint save")
                path.unlink(missing_ok=True)


# What a resumed run may change without changing what it optimises: the optimiser, the EMA and the sampling settings
# (and where a first stage is read from). Anything else the model was built from is its objective.
RESUMABLE = {"lr", "lr_scaling", "lr_reference_batch", "weight_decay", "betas", "warmup_steps", "optimizer"}
RESUMABLE |= {"fused_optimizer", "speed"}
RESUMABLE |= {"lr_scheduler", "ema_decay", "sampler", "sample_steps", "discretization", "level_samplers"}
RESUMABLE |= {"level_steps", "sample_augmentation", "autoencoder_ckpt"}


def _plain(value):
    """A hyperparameter as plain JSON-like data (tuples as lists), so that a config's and a checkpoint's compare."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def objective_changes(trained: dict, now: dict) -> dict[str, tuple]:
    """The model options (``key: (checkpoint's, config's)``) a resumed run would change beyond :data:`RESUMABLE`."""
    keys = sorted((set(trained) | set(now)) - RESUMABLE)
    return {
        k: (trained.get(k), now.get(k))
        for k in keys
        if not k.startswith("_") and _plain(trained.get(k)) != _plain(now.get(k))
    }


class RunLock:
    """One ``fit`` per experiment directory at a time: an exclusive ``flock`` on ``<run>/.fit.lock``, held by rank 0
    until the process ends (the kernel releases it when the process dies, so a crash leaves no stale lock). A second
    ``fit`` into the same directory gets a UserError naming the directory and the holder's process id."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".fit.lock"
        self.file = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(
                f"another fit is running in {self.path.parent} ({holder}); wait for it, or train under another "
                "--exp.name (nothing was written)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self.file = f
        return self
