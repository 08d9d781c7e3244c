"""Test helper, imported by a run's config: once imported, a ModelCheckpoint that is about to delete the checkpoint a
new best one replaced kills its process instead (SIGKILL), as a preemption landing between the two would."""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint


def _die(self, trainer, filepath) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Arm(Callback):
    """Listing this callback in a config arms the kill."""

    def setup(self, trainer, pl_module, stage) -> None:
        ModelCheckpoint._remove_checkpoint = _die
