"""W&B views as code: what each logged key family means (``define_metric``) and the workspace a kind of experiment
needs (a training run, a pyramid, a step-aware supernet, a ``search-steps`` study, a sweep of runs), applied with W&B's
own library for it (``wandb-workspaces``) by ``python -m pyramid_dm views apply`` when online.

A panel names its keys as they are logged, or as patterns (``val/fid_*``); ``views check`` (and the tests) match every
pattern against the keys a real run logged, so a renamed metric breaks a test, not a dashboard. Line and media panels
read a run's history; scatter panels (across runs) read each run's summary, where :data:`SUMMARIES` keeps the best and
the last value of the families whose best is a minimum or a maximum.

The step axis is Lightning's: every key is plotted against ``trainer/global_step`` (``WandbLogger`` defines it).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

# key family -> W&B summary (define_metric): "best" is the minimum of losses and distances, the maximum of scores
SUMMARIES: dict[str, str] = {
    "val/loss": "min,last",
    "val/loss_*": "min,last",
    "val/fid_*": "min,last",
    "val/kid_*": "min,last",
    "val/rec_fid_*": "min,last",
    "val/swd_*": "min,last",
    "val/psnr": "max,last",
    "val/acc*": "max,last",
    "val/precision*": "max,last",
    "val/recall*": "max,last",
    "trial/fid": "min,last",
}
STEP = "trainer/global_step"


def summary_of(key: str) -> str | None:
    """The summary W&B keeps of ``key`` (None: its last value, W&B's default)."""
    return next((summary for pattern, summary in SUMMARIES.items() if fnmatch.fnmatchcase(key, pattern)), None)


def define_metrics(run, keys, defined: set[str]) -> None:
    """``run.define_metric`` for each key of ``keys`` not in ``defined`` whose family has a summary; call it before the
    key's first value is logged (a summary counts only the values logged after it). Adds the keys to ``defined``."""
    for key in keys:
        if key not in defined:
            defined.add(key)
            summary = summary_of(key)
            if summary:  # a dot in a name is W&B's path separator unless escaped (val/loss_w0.5)
                run.define_metric(key.replace(".", "\\."), summary=summary)


@dataclass(frozen=True)
class Panel:
    """One chart: ``kind`` "line" (history against ``x``), "media" (logged images) or "scatter" (one point per run,
    from summaries: ``x`` and ``keys[0]``). ``keys`` are logged names or fnmatch patterns."""

    title: str
    kind: str
    keys: tuple[str, ...]
    x: str = STEP

    def history_keys(self) -> tuple[str, ...]:
        return () if self.kind == "scatter" else self.keys

    def summary_keys(self) -> tuple[str, ...]:
        return (self.x, *self.keys) if self.kind == "scatter" else ()


@dataclass(frozen=True)
class View:
    name: str
    description: str
    sections: dict[str, tuple[Panel, ...]] = field(default_factory=dict)
    group_by: str | None = None  # a sweep: runs grouped by this run attribute (W&B's "Group": exp.group / exp.name)


def line(title: str, *keys: str, x: str = STEP) -> Panel:
    return Panel(title, "line", keys, x)


def media(title: str, *keys: str) -> Panel:
    return Panel(title, "media", keys)


def scatter(title: str, x: str, y: str) -> Panel:
    return Panel(title, "scatter", (y,), x)


TRAINING = {
    "Losses": (line("loss", "train/loss", "val/loss"),),
    "Quality": (line("FID", "val/fid_*"), line("KID", "val/kid_*")),
    "Samples": (media("samples", "samples"),),
    "Cost": (
        line("training FLOPs", "train/flops"),
        line("images seen", "train/images"),
        line("throughput (images/s; per device, and over all ranks with DDP)", "train/*samples_per_sec"),
        line("achieved FLOP/s per device", "train/device/flops_per_sec"),
        line("learning rate", "lr-*"),
    ),
}
VIEWS: dict[str, View] = {
    "run": View("run", "one training run of any family: losses, in-training quality, samples, cost", TRAINING),
    "pyramid": View(
        "pyramid",
        "a pyramid or Pyramidal Flow run: the training run's panels, plus the loss of each level and the samples of "
        "each level, coarse to fine",
        {
            **TRAINING,
            "Levels": (
                line("loss per level", "train/loss_level*"),
                media("samples per level", "samples/level*"),
                media("coarse to fine", "samples/coarse_to_fine"),
            ),
        },
    ),
    "step_aware": View(
        "step_aware",
        "a step-aware supernet: the training run's panels, plus the loss at each width (sandwich rule)",
        {
            **TRAINING,
            "Widths": (
                line("train loss per width", "train/loss_w*", "train/loss_sandwich"),
                line("val loss per width", "val/loss_w*"),
            ),
        },
    ),
    "search": View(
        "search",
        "a search-steps study (its workers' runs): FID-proxy against GFLOPs per trial, the front and its plot",
        {
            "Trials": (
                scatter("FID-proxy vs GFLOPs per sample", "trial/gflops_per_sample", "trial/fid"),
                line("FID-proxy per trial", "trial/fid", x="trial/number"),
                line("ms per sample per trial", "trial/ms_per_sample", x="trial/number"),
                line("mean width per trial", "trial/mean_width", x="trial/number"),
            ),
            "Front": (media("Pareto front", "search/pareto"),),
        },
    ),
    "sweep": View(
        "sweep",
        "runs of one experiment group (seeds, settings): curves grouped by the run's group, and quality against "
        "training FLOPs, one point per run",
        {
            "Losses": (line("val loss", "val/loss"), line("train loss", "train/loss")),
            "Quality vs cost": (
                scatter("best FID vs training FLOPs", "train/flops", "val/fid_*"),
                scatter("best val loss vs training FLOPs", "train/flops", "val/loss"),
            ),
            "Samples": (media("samples", "samples"),),
        },
        group_by="Group",
    ),
}


def matches(pattern: str, keys) -> list[str]:
    """The keys ``pattern`` (a name or an fnmatch pattern) stands for, sorted."""
    return sorted(k for k in keys if fnmatch.fnmatchcase(k, pattern))


def missing_keys(view: View, history: set[str], summary: set[str]) -> list[str]:
    """'section / panel: pattern' for each key pattern of ``view`` that no logged key matches (history keys for line
    and media panels, a run's summary keys for scatter panels)."""
    out = []
    for section, panels in view.sections.items():
        for panel in panels:
            wanted = [(k, history) for k in (*panel.history_keys(), *([panel.x] if panel.kind == "line" else []))]
            wanted += [(k, summary) for k in panel.summary_keys()]
            out += [f"{section} / {panel.title}: {k}" for k, found in wanted if not matches(k, found)]
    return out


def regex_of(pattern: str) -> str:
    """W&B's ``metric_regex`` for an fnmatch pattern."""
    return "^" + re.escape(pattern).replace(r"\*", ".*") + "$"
