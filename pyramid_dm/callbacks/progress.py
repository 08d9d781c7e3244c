"""The progress bar of a run bounded by steps: Lightning's RichProgressBar writes "Epoch 80/-2" when ``max_epochs`` is
-1 (its value whenever ``max_steps`` bounds the run); this one writes "Epoch 80" then."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar

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
