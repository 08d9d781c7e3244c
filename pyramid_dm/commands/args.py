"""What the sampling commands (``sample``, ``evaluate``, ``search-steps``) take alike: the checkpoint and its config,
the sampler and step budget, the device and seed, classifier guidance; one definition of each flag, so that the
commands spell and check them the same way."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..data.builtin import shard_location
from ..data.manifest import Manifest, ShardError
from ..diffusion import DISCRETIZATIONS, SAMPLERS
from ..engine import ClassifierGuide, check_discretization, check_sampler, check_steps
from ..errors import UserError


def add_checkpoint_args(p: argparse.ArgumentParser, what: str, config: bool = True) -> None:
    """``--ckpt_path`` (``what``: its help) and, for a command that reads data, ``--config``."""
    p.add_argument("--ckpt_path", required=True, help=what)
    if config:
        p.add_argument("--config", help="config with the data section (default: the run's saved config.yaml)")


def add_sampler_args(p: argparse.ArgumentParser, sampler_help: str, steps=None) -> None:
    """``--sampler`` (one or more names), ``--steps`` (``steps``: a parser or group to add it to, False: the command
    adds its own) and ``--discretization``."""
    p.add_argument("--sampler", nargs="+", help=f"{sampler_help.format(samplers=sorted(SAMPLERS))}")
    if steps is not False:
        (steps or p).add_argument(
            "--steps",
            type=int,
            nargs="+",
            help="sampling steps, or one count per pyramid level, coarse first (default: the model's own; Heun makes "
            "2 * steps - 1 calls)",
        )
    p.add_argument("--discretization", help=f"one of {list(DISCRETIZATIONS)} (default: each sampler's own)")
    p.add_argument(
        "--any_sampler",
        action="store_true",
        help="sample with a sampler made for another kind of model than the checkpoint's (a multistep ODE sampler on "
        "a consistency or MeanFlow model, or the reverse), which is otherwise refused",
    )


class Parser(argparse.ArgumentParser):
    """The commands' argument parser: ``--help`` shows every default, and an option may be spelled with dashes or
    underscores (``--batch-size`` or ``--batch_size``; the help shows the command's own spelling), since the
    commands grew both and a newcomer cannot guess which."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = self._option_string_actions
        spelled = []
        for arg in args:
            name, eq, value = arg.partition("=")
            if name.startswith("--") and name not in known:
                for other in (name[:2] + name[2:].replace("-", "_"), name[:2] + name[2:].replace("_", "-")):
                    if other in known:
                        name = other
                        break
            spelled.append(name + eq + value)
        return super().parse_known_args(spelled, namespace)


def checkpoint_label(ckpt_path, global_step) -> str:
    """A checkpoint's name in the default output folders of ``sample`` and ``evaluate``: its file name and its step
    (``last-step45``), so that the same ``last.ckpt`` after a resume gets a new folder instead of a refusal to
    overwrite the older step's results (a name that holds its step already, ``best-step739``, is kept as it is)."""
    stem = Path(ckpt_path).stem
    return stem if global_step is None or f"step{global_step}" in stem else f"{stem}-step{global_step}"


def add_run_args(p: argparse.ArgumentParser, seed_help: str = "the noise seed") -> None:
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")


def check_sampler_args(args: argparse.Namespace, steps: bool = True) -> None:
    """The names (and, unless the command checks its own, the counts) of :func:`add_sampler_args`' flags, checked
    before anything is loaded."""
    for name in args.sampler or []:
        check_sampler(name, "--sampler")
    check_discretization(args.discretization, "--discretization")
    if steps:
        check_steps(args.steps or [], "--steps")


def sampler_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--option`` (numbers as floats, true/false as booleans)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. --option eta=0.5)")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    try:
        return key, float(value)
    except ValueError:
        return key, value


def add_classifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classifier", help="a noise-conditional classifier checkpoint: classifier guidance")
    p.add_argument(
        "--classifier_scale", type=float, default=1.0, help="classifier guidance scale s >= 0 (with --classifier)"
    )
    p.add_argument(
        "--classifier_any_schedule",
        action="store_true",
        help="guide a model whose noise schedule differs from the classifier's (it then extrapolates)",
    )


def load_guide(args, model, ckpt: dict, device, manifest: Manifest | None = None):
    """The classifier guide of ``--classifier`` (None without), checked against the model and its data."""
    if not args.classifier:
        if args.classifier_scale != 1.0:
            raise UserError("--classifier_scale needs --classifier (the classifier checkpoint that guides)")
        return None
    guide = ClassifierGuide(args.classifier, args.classifier_scale, device)
    dataset = manifest.name if manifest is not None else _dataset_of(ckpt)
    guide.check(model, dataset, any_schedule=args.classifier_any_schedule)
    return guide


def _dataset_of(ckpt: dict) -> str | None:
    """The data set a checkpoint was trained on, if its shards can still be read (else None: not checked)."""
    shards = (ckpt.get("datamodule_hyper_parameters") or {}).get("shards")
    try:
        return Manifest.load(shard_location(shards)).name if shards else None
    except (ShardError, UserError, OSError):
        return None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
