"""Images per second, through Lightning's ``ThroughputMonitor``."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def _batch_images(batch) -> int:
    return int(batch[0].shape[0])


class ImageThroughput(ThroughputMonitor):
    """``ThroughputMonitor`` for ``(images, labels, seeds)`` batches. Logs ``train/samples_per_sec`` (images/s over all
    ranks) and ``train/device/samples_per_sec`` (per rank) at the trainer's ``log_every_n_steps``, averaged over
    ``window_size`` batches."""

    def __init__(self, window_size: int = 5):
        super().__init__(batch_size_fn=_batch_images, window_size=window_size)
