"""The progress bar of a run bounded by steps: Lightning's RichProgressBar writes "Epoch 80/-2" when ``max_epochs`` is
-1 (its value whenever ``max_steps`` bounds the run); this one writes "Epoch 80" then."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepBoundedProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:  # pinned by tests/test_compat.py
        text = super()._get_train_description(current_epoch)
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            text = text.replace(f"/{self.trainer.max_epochs - 1}", "", 1)
        return text


def use_step_bounded_bar(trainer) -> None:
    """Give the trainer's default Rich progress bar (exactly RichProgressBar, so a configured one keeps its settings
    and class) the step-bounded description."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        bar.__class__ = StepBoundedProgressBar
