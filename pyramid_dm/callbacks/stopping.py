"""Ctrl-C (SIGINT) and SIGTERM (Slurm's ``scancel`` and time limit, a container stop) end ``fit`` within a bounded
time, with a checkpoint whenever one is consistent, and exit 130 / 143 as shells and schedulers expect."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ..resume import INTERRUPTED_KEY, interrupt_checkpoint_path
from ..signals import stop_at_next_wait, waiting

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SAME_SIGNAL_S = 1.0  # a repeat this soon is the same stop (Slurm signals every process, a DDP launcher forwards too)


class StopRequested(BaseException):
    """The run was stopped by a signal (not an ``Exception``: no handler on the way may take it for bad data)."""

    def __init__(self, stopper: StopOnSignal, code: int, message: str):
        super().__init__(message)
        self.stopper, self.code = stopper, code


class StopOnSignal(Callback):
    """Ends training on SIGINT or SIGTERM (Lightning alone stops wherever a KeyboardInterrupt lands, and acts on
    SIGTERM only after a step, never while the trainer waits for data):

    - during a training step: at its end, with a checkpoint of that step, so ``--ckpt_path last`` goes on where it
      stopped and no step is trained, or W&B row logged, twice. Under DDP the ranks agree (one integer all-reduced)
      before every step ends;
    - while the trainer waits for data (a stalled ``pipe:`` shard, in training or in validation), or when it next
      begins such a wait (:func:`pyramid_dm.signals.waiting_on_data`): at once, with a checkpoint of the last
      finished step if this process trained one since it started (a single process: under DDP another rank may be
      inside a step, so the newest checkpoint stands);
    - the same signal again (after :data:`SAME_SIGNAL_S`): at once, without a checkpoint;
    - in any case the process ends ``grace_s`` after the first signal (a watchdog: a rank waiting in a collective
      for a rank that left).

    The checkpoint is the ``last`` one of the run's ModelCheckpoint (else ``interrupted.ckpt`` in the run directory).
    The exit status is 128 + the signal: 130 for INT, 143 for TERM. SIGTERM is forwarded to the ranks that a local
    DDP launcher started.
    """

    def __init__(self, grace_s: float = 60.0):
        self.grace_s = grace_s
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self._first: float = 0.0
        self._previous: dict = {}
        self._in_step = False
        self._trainer = None
        self._start_step: int | None = None
        self._deadline: threading.Timer | None = None

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    # ---- installing -----------------------------------------------------------------------------------------------
    def _install(self, trainer) -> None:
        # after Lightning's own handlers (registered just before the run starts), which are restored at its teardown
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in SIGNALS}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        stop_at_next_wait(None)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._install(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._install(trainer)
        self._start_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def cancel_deadline(self) -> None:
        """The run has ended (the process may go on: a notebook, a test): the watchdog stands down."""
        if self._deadline is not None:
            self._deadline.cancel()

    # ---- the signal -----------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            if time.monotonic() - self._first < SAME_SIGNAL_S:
                return
            raise StopRequested(self, 128 + signum, f"{name} again: stopped at once, without a checkpoint")
        self.signum, self._first = signum, time.monotonic()
        self._forward(signum)
        self._deadline = threading.Timer(self.grace_s, self._expire)
        self._deadline.daemon = True
        self._deadline.start()
        if waiting():
            self._stop_now()
        stop_at_next_wait(self._stop_now)
        again = "Ctrl-C" if signum == signal.SIGINT else name
        when = "after this step" if self._in_step else "before the next step"
        print(f"\n{again}: stopping {when}, with a checkpoint ({again} again to stop at once)", flush=True)

    def _forward(self, signum) -> None:
        launcher = getattr(self._trainer.strategy, "launcher", None) if self._trainer is not None else None
        if signum == signal.SIGTERM and launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)

    def _expire(self) -> None:
        print(
            f"{signal.Signals(self.signum).name}: the run did not end within {self.grace_s:g} s of the signal "
            "(a rank waiting for another that left?); exiting now, the newest checkpoint stands",
            file=sys.stderr,
            flush=True,
        )
        os._exit(self.exit_code)

    def _stop_now(self) -> None:
        """Leave the wait for data: the model is at the end of its last step, nothing of the next one has run."""
        stop_at_next_wait(None)
        trainer, name = self._trainer, signal.Signals(self.signum).name
        trained = self._start_step is not None and trainer.global_step > self._start_step
        if trained and trainer.world_size == 1:
            path = self._save(trainer)
            message = f"{name} while waiting for data: stopped at step {trainer.global_step}: saved {path}"
            raise StopRequested(self, self.exit_code, f"{message}; resume with --ckpt_path last")
        if trainer.global_step == 0:
            raise StopRequested(self, self.exit_code, f"{name} while waiting for data: stopped before the first step")
        why = "under DDP other ranks may be inside a step" if trained else "no step trained since the last checkpoint"
        raise StopRequested(
            self,
            self.exit_code,
            f"{name} while waiting for data: stopped at step {trainer.global_step} without a new checkpoint ({why}); "
            "resume with --ckpt_path last",
        )

    # ---- the step boundary ----------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._in_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_step = False
        pending = self.signum is not None
        if trainer.world_size > 1:  # one process needs no tensor and no device sync on every step
            flag = torch.tensor([int(pending)], device=trainer.strategy.root_device)
            pending = bool(trainer.strategy.reduce(flag, reduce_op="max").item())
        if not pending:
            return
        if self.signum is None:  # another rank got it
            self.signum = signal.SIGTERM
        stop_at_next_wait(None)
        path = self._save(trainer)
        trainer.should_stop = True
        rank_zero_info(f"stopped at step {trainer.global_step}: saved {path}; resume with --ckpt_path last")

    def _save(self, trainer):
        """The checkpoint of the step the run stops at (marked by :meth:`on_save_checkpoint`); its path."""
        path = interrupt_checkpoint_path(trainer)
        self.stopped_at = trainer.global_step
        trainer.save_checkpoint(path, weights_only=False)
        return path

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning counts this step's logging row only after on_train_batch_end; the marker lets StepBoundaryResume
        # start the resumed run's rows after it (without it they restart one step early, and a step shows twice)
        if self.stopped_at is not None:
            checkpoint[INTERRUPTED_KEY] = True
