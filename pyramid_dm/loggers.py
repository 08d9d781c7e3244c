"""Weights & Biases logging: online when the user has credentials, offline (``wandb sync`` later) when not."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

RUN_ID_FILE = "wandb_run_id"


def has_wandb_credentials() -> bool:
    """True after ``wandb login`` (an entry in ~/.netrc or $NETRC for the W&B host) or with WANDB_API_KEY set."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline(offline: bool | None) -> bool:
    """Explicit ``offline`` wins; then WANDB_MODE; then offline exactly when no credentials exist."""
    if offline is not None:
        return offline
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not has_wandb_credentials()


class RunLogger(WandbLogger):
    """``WandbLogger`` with automatic online/offline mode and a run id kept in the run directory.

    ``offline=None`` (default) decides by :func:`wandb_offline`. The id is stored in ``save_dir/wandb_run_id`` so that a
    resumed training (``--ckpt_path last``, or a SLURM requeue) continues the same W&B run; a fresh training gets a new
    id. ``group`` and ``tags`` are filled in by the CLI from the experiment name, model family and data set.
    """

    def __init__(self, save_dir: str = "runs", offline: bool | None = None, id: str | None = None, **kwargs):
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(save_dir=save_dir, offline=wandb_offline(offline), id=id, **kwargs)
        self._explicit_id = id is not None

    def prepare_run(self, resume: bool, group: str | None = None, tags: list[str] | None = None) -> None:
        """Call before the experiment starts: pick the run id (reused when resuming) and group/tags."""
        id_file = Path(self.save_dir) / RUN_ID_FILE
        if not self._explicit_id:
            run_id = id_file.read_text().strip() if resume and id_file.exists() else uuid.uuid4().hex[:12]
            self._wandb_init["id"] = self._id = run_id
        self._wandb_init["resume"] = "allow"
        id_file.write_text(self._wandb_init["id"] + "\n")
        if group and not self._wandb_init.get("group"):
            self._wandb_init["group"] = group
        self._wandb_init["tags"] = sorted({*(self._wandb_init.get("tags") or []), *(tags or [])})
