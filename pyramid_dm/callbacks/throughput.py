"""Images per second, through Lightning's ``ThroughputMonitor``."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def _batch_images(batch) -> int:
    return int(batch[0].shape[0])


class ImageThroughput(ThroughputMonitor):
    """``ThroughputMonitor`` for ``(images, labels, seeds)`` batches. Logs ``train/device/samples_per_sec`` (images/s
    of one rank) and, with more than one rank, ``train/samples_per_sec`` (over all ranks) at the trainer's
    ``log_every_n_steps``, averaged over ``window_size`` batches, once that many have run."""

    def __init__(self, window_size: int = 5):
        super().__init__(batch_size_fn=_batch_images, window_size=window_size)
