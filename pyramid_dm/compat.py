"""Every use of a private (or undocumented) Lightning, W&B, Optuna or torch API, in one place. Each has a test in
``tests/test_compat.py`` that fails loudly when an upgrade of Lightning or W&B changes it; fix it here, once.

Pinned in ``pyproject.toml``: lightning 2.6.x, wandb 0.31.x, optuna 4.9.x, torch 2.13.x.
"""

from __future__ import annotations

import signal

# ---- Lightning ------------------------------------------------------------------------------------------------------
FIT_LOOP = "fit_loop"  # checkpoint["loops"][FIT_LOOP]: the training loop's progress counters
BATCH_PROGRESS = "epoch_loop.batch_progress"  # its batch counters (ready / started / processed / completed)
EPOCH_LOOP_STATE = "epoch_loop.state_dict"  # holds LOGGING_STEP
LOGGING_STEP = "_batches_that_stepped"  # the step Lightning logs rows at (private attribute of the epoch loop)
EPOCH_LOOP = "epoch_loop."  # prefix of the training epoch loop's keys in the fit loop's state
VAL_LOOP = "epoch_loop.val_loop"  # prefix of its validation loop's keys (their progress is not the training step's)
TRAIN_DESCRIPTION = "_get_train_description"  # RichProgressBar's hook that writes "Epoch a/b"


def training_progress(loop_state: dict) -> list[dict]:
    """The progress trackers of the training epoch loop in a fit loop's state (not its validation loop's)."""
    return [
        progress
        for key, progress in loop_state.items()
        if key.startswith(EPOCH_LOOP) and not key.startswith(VAL_LOOP) and isinstance(progress, dict)
    ]


def edit_train_description(bar, edit) -> None:
    """Make progress bar ``bar`` (a RichProgressBar) write ``edit(bar, text)`` where it writes its "Epoch a/b" text,
    by giving it a subclass of its own class that overrides the private hook."""
    base = type(bar)

    def hook(self, current_epoch: int) -> str:
        return edit(self, getattr(super(cls, self), TRAIN_DESCRIPTION)(current_epoch))

    cls = type(f"Edited{base.__name__}", (base,), {TRAIN_DESCRIPTION: hook})
    bar.__class__ = cls


def attached_trainer(module):
    """The Trainer a LightningModule is attached to, or None (``module.trainer`` raises when there is none)."""
    return module._trainer


def raw_optimizer(lightning_optimizer):
    """The torch optimizer behind a LightningOptimizer: stepping it does not count a global step (a second optimizer
    stepped through Lightning would count each batch twice under manual optimization)."""
    return lightning_optimizer.optimizer


def fit_loop_state(checkpoint: dict) -> dict:
    """The training loop's state in a Lightning checkpoint (empty if it has none)."""
    return checkpoint.get("loops", {}).get(FIT_LOOP, {})


def checkpoint_logging_step(loop_state: dict) -> int | None:
    return loop_state.get(EPOCH_LOOP_STATE, {}).get(LOGGING_STEP)


def logging_step(trainer) -> int:
    """The step Lightning logs its rows at now (the 0-based index of the last training batch: validation after N
    optimizer steps logs at N - 1), so that a callback's rows land beside ``val/loss``."""
    return int(getattr(trainer.fit_loop.epoch_loop, LOGGING_STEP))


def set_logging_step(trainer, step: int) -> None:
    """Set the step Lightning logs the next rows at."""
    setattr(trainer.fit_loop.epoch_loop, LOGGING_STEP, step)


def requeue_handler(signum: int):
    """The handler Lightning's SLURM connector installed for ``signum`` (it saves ``hpc_ckpt`` and requeues), or None.
    Lightning installs it with ``signal.signal`` when fitting starts under SLURMEnvironment(auto_requeue=True)."""
    handler = signal.getsignal(signum)
    return handler if callable(handler) else None


# ---- W&B (through Lightning's WandbLogger) --------------------------------------------------------------------------
WANDB_FLUSH_SETTING = "x_transaction_log_flush_interval"  # W&B's seconds between writes of the run's .wandb file


def wandb_init_kwargs(logger) -> dict:
    """The keyword arguments WandbLogger will pass to ``wandb.init`` (mutable until the run starts)."""
    return logger._wandb_init


def set_wandb_run_id(logger, run_id: str) -> None:
    """Give a WandbLogger whose run has not started the W&B run id it will start (or resume)."""
    logger._wandb_init["id"] = logger._id = run_id


def wandb_started(logger) -> bool:
    return logger._experiment is not None


def run_starting_step(run) -> int:
    """The first step a (resumed) W&B run accepts."""
    return run.starting_step


# ---- Optuna ---------------------------------------------------------------------------------------------------------
def fail_trial(study, trial) -> None:
    """Mark a RUNNING trial of ``study`` FAIL from outside the process that runs it (Optuna has no public call for a
    trial whose worker died: ``study.tell`` needs the live trial; its storage takes the trial's private id)."""
    from optuna.trial import TrialState

    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


# ---- torch ----------------------------------------------------------------------------------------------------------
def conv_forward(conv, x, weight, bias):
    """``conv`` (an ``nn.Conv2d``) applied with another ``weight`` and ``bias`` (a slice of its own), its padding mode
    and the rest of its settings kept: ``Conv2d._conv_forward``."""
    return conv._conv_forward(x, weight, bias)


def summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, data) -> str:
    """Lightning's model-summary table (its private ``_format_summary_table``)."""
    from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

    return _format_summary_table(
        total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *data
    )


def summary_depth(callback) -> int:
    """The ``max_depth`` a ModelSummary callback was made with (a private attribute)."""
    return callback._max_depth
