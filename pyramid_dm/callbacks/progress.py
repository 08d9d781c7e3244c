"""Progress: the bar of a run bounded by steps (Lightning's RichProgressBar writes "Epoch 80/-2" when ``max_epochs``
is -1, its value whenever ``max_steps`` bounds the run; this one writes "Epoch 80" then), and plain progress lines
when the output is not a terminal."""

from __future__ import annotations

import datetime
import sys
import time

from lightning.pytorch.callbacks import Callback, RichProgressBar

from .. import compat


def step_bounded(bar, text: str) -> str:
    """``text`` without Lightning's "/-2" when the run is bounded by steps."""
    if bar.trainer.max_epochs is not None and bar.trainer.max_epochs < 0:
        text = text.replace(f"/{bar.trainer.max_epochs - 1}", "", 1)
    return text


def use_step_bounded_bar(trainer) -> None:
    """Give the trainer's default Rich progress bar (exactly RichProgressBar, so a configured one keeps its settings
    and class) the step-bounded description."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        compat.edit_train_description(bar, step_bounded)


class PlainProgress(Callback):
    """Progress as plain lines, for output that is not a terminal (a log file, Slurm's output): a progress bar writes
    nothing readable there, and a user tailing the file saw nothing for twenty minutes. One line at the first step,
    then every ``every_s`` seconds, and at the last: step, share of ``max_steps``, steps/s, the last logged loss and
    the time left."""

    def __init__(self, every_s: float = 60.0, stream=None):
        self.every_s, self.stream = every_s, stream
        self._start = self._last = None
        self._start_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now, step, total = time.monotonic(), trainer.global_step, trainer.max_steps
        last = total > 0 and step >= total
        if not trainer.is_global_zero or not (step == self._start_step + 1 or last or now - self._last >= self.every_s):
            return
        self._last = now
        rate = (step - self._start_step) / max(now - self._start, 1e-9)
        parts = [f"step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total > 0 else ""), f"{rate:.2f} steps/s"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        if total > 0 and rate > 0:
            parts.append(f"ETA {datetime.timedelta(seconds=round((total - step) / rate))}")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)


def plain_progress_wanted(trainer) -> bool:
    """A progress bar is on and stdout is not a terminal."""
    return trainer.progress_bar_callback is not None and not sys.stdout.isatty()
