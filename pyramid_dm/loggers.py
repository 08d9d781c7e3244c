"""Weights & Biases logging: online when the user has credentials, offline (``wandb sync`` later) when not."""

from __future__ import annotations

import json
import netrc
import os
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn

from . import compat
from .views import define_metrics

RUN_ID_FILE = "wandb_run_id"
# W&B writes logged rows to the run's .wandb file every x_transaction_log_flush_interval seconds (default 15): a job
# killed by SLURM loses whatever was logged since. A short interval, and one wait before each checkpoint is written
# (LogsBeforeCheckpoints), make every row logged before a checkpoint durable, so a resumed run's history has no hole.
FLUSH_INTERVAL_S = 0.25


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

    A resumed run continues W&B's own step (``_step``) after the rows of its earlier local parts: offline W&B cannot ask
    the server where the run stopped, and ``wandb sync --id ID`` needs the parts' steps to follow each other. Rows
    logged before a checkpoint are on disk before it is written (:class:`LogsBeforeCheckpoints`).
    """

    def __init__(self, save_dir: str = "runs", offline: bool | None = None, id: str | None = None, **kwargs):
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if kwargs.get("settings") is None:  # LightningCLI passes settings=None
            kwargs["settings"] = {compat.WANDB_FLUSH_SETTING: FLUSH_INTERVAL_S}
        elif isinstance(kwargs["settings"], dict):
            kwargs["settings"] = {compat.WANDB_FLUSH_SETTING: FLUSH_INTERVAL_S, **kwargs["settings"]}
        super().__init__(save_dir=save_dir, offline=wandb_offline(offline), id=id, **kwargs)
        init = compat.wandb_init_kwargs(self)
        if init.get("anonymous") is None:  # W&B warns that the setting has no effect whenever it is passed at all
            init.pop("anonymous", None)
        self._explicit_id = id is not None
        self._continue_steps = False  # a resumed run: its first row continues W&B's step after the earlier parts
        self._defined: set[str] = set()  # keys given their summary (:func:`pyramid_dm.views.define_metrics`)

    def prepare_run(
        self, resume: bool, group: str | None = None, tags: list[str] | None = None, job_id: str | None = None
    ) -> None:
        """Call before the experiment starts: pick the run id and the group/tags.

        The id is, in this order: the one given to the logger; the run directory's stored id when resuming; ``job_id``
        (derived from the SLURM job, which a requeued job keeps); a fresh random one.
        """
        id_file = Path(self.save_dir) / RUN_ID_FILE
        init = compat.wandb_init_kwargs(self)
        if not self._explicit_id:
            if resume and id_file.exists():
                run_id = id_file.read_text().strip()
            else:
                run_id = job_id or uuid.uuid4().hex[:12]
            compat.set_wandb_run_id(self, run_id)
        init["resume"] = "allow"
        id_file.write_text(init["id"] + "\n")
        self._continue_steps = resume
        if group and not init.get("group"):
            init["group"] = group
        init["tags"] = sorted({*(init.get("tags") or []), *(tags or [])})

    def prepare_job(self, job_type: str, group: str | None = None, tags: list[str] | None = None) -> None:
        """Call before a ``validate``/``test``/``predict`` run starts: its W&B run is its own (job type ``job_type``,
        in the experiment's group), kept in ``save_dir/<job_type>/wandb``, so the training run's folder and its
        ``latest-run`` link stay the training's, and ``wandb sync .../wandb/offline-run-*`` uploads training alone."""
        init = compat.wandb_init_kwargs(self)
        folder = Path(self.save_dir) / job_type
        folder.mkdir(parents=True, exist_ok=True)
        init.update(dir=str(folder), job_type=job_type)
        if not self._explicit_id:
            compat.set_wandb_run_id(self, uuid.uuid4().hex[:12])
        if group and not init.get("group"):
            init["group"] = group
        init["tags"] = sorted({*(init.get("tags") or []), *(tags or []), job_type})

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        define_metrics(self.experiment, metrics, self._defined)  # best-of summaries, before a key's first value
        if not self._continue_steps:
            return super().log_metrics(metrics, step)
        # The first row of a resumed run sets W&B's step; the rows after it count on from there.
        this_part = Path(self.experiment.dir).parent
        first = next_wandb_step(Path(self.save_dir) / "wandb", self.experiment.id, exclude=this_part)
        row = dict(metrics, **({} if step is None else {"trainer/global_step": step}))
        self.experiment.log(row, step=max(first, compat.run_starting_step(self.experiment)))
        self._continue_steps = False

    def wait_for_flush(self) -> None:
        """Returns once every row logged so far is in the run's .wandb file (two flush intervals)."""
        if compat.wandb_started(self):
            time.sleep(2 * FLUSH_INTERVAL_S)


class LogsBeforeCheckpoints(Callback):
    """Every checkpoint, Lightning's SLURM requeue checkpoint included, is written only once the rows logged before it
    are on disk (:meth:`RunLogger.wait_for_flush`): a job killed right after a checkpoint resumes from it with no hole
    in its W&B history."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, RunLogger):
                logger.wait_for_flush()


def next_wandb_step(wandb_dir: Path, run_id: str, exclude: Path | None = None) -> int:
    """One past the last W&B step written by the local parts (``*run-*-<run_id>``) of a run but ``exclude``, or 0."""
    last = -1
    for part in sorted(wandb_dir.glob(f"*run-*-{run_id}")):
        if exclude is not None and part.resolve() == exclude.resolve():
            continue
        try:  # a part killed mid-write (SIGKILL, preemption) may be unreadable: warn, never fail the resume
            proc = subprocess.run(
                ["wandb", "leet", "inspect", "--summary", "--json", str(part)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            last = max(last, int(json.loads(proc.stdout).get("step") or 0))
        except (ValueError, TypeError, OSError, subprocess.TimeoutExpired):
            rank_zero_warn(f"could not read the W&B steps of {part}; the resumed run's steps may overlap them")
    return last + 1
