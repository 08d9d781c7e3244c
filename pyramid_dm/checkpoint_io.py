"""Checkpoint writes that can never leave a truncated file under the final name.

Lightning's ``TorchCheckpointIO`` writes local files through an fsspec transaction whose temporary file lives in the
system temp directory; on clusters that is another filesystem than the run directory, so the final ``shutil.move``
is a copy that a preemption can cut short (and it fills the node's /tmp). Here the checkpoint is written next to its
target as a hidden ``.partial`` file, fsynced, then renamed over it with ``os.replace`` (atomic on POSIX).
Remote URLs (s3://, gs://, ...) keep Lightning's behaviour.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "inline_container" not in str(exc) and "write" not in str(exc):
                raise
            tmp.unlink(missing_ok=True)
            free = shutil.disk_usage(path.parent).free / 2**30
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the write failed"
            raise UserError(
                f"cannot write checkpoint {path.name} in {path.parent} ({why}; {free:.2f} GiB free there): the "
                "checkpoints already written are intact; free space (or move exp.root) and resume with --ckpt_path last"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
