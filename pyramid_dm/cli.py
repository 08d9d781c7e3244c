"""Command line: ``python -m pyramid_dm {fit,validate,test,predict} --config configs/....yaml``, plus ``sample``,
``evaluate``, ``shards``, ``train-classifier`` and ``bench`` (:data:`COMMANDS`).

Configs are LightningCLI YAML with OmegaConf interpolation resolved over the merged config (``${exp.name}``,
``${oc.env:VAR,default}``). A config may list ``defaults:`` (paths relative to itself): those pieces are loaded first,
then the file itself, then command-line overrides, so configs compose without copy-paste.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from operator import attrgetter
from pathlib import Path

import yaml
from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from .callbacks.cost import TrainingCost, with_cost_summary
from .callbacks.progress import PlainProgress, plain_progress_wanted, use_step_bounded_bar
from .callbacks.stopping import StopOnSignal, StopRequested
from .checkpoints import read_checkpoint
from .config import config_chain
from .errors import UserError, one_line
from .loggers import LogsBeforeCheckpoints, RunLogger
from .registry import load_plugins
from .resume import (
    HPC_PATTERN,
    RequeueAtStepBoundary,
    RunLock,
    StepBoundaryResume,
    TidyCheckpoints,
    TrainingLeft,
    newest_checkpoint,
    objective_changes,
    slurm_job_id,
    slurm_requeued,
    slurm_run_id,
)

LINKED_FROM_DATA = ("image_size", "channels", "num_classes")
RESUME_IF_ANY = "last-if-any"  # --ckpt_path: resume the run if it has a checkpoint, else start fresh


def expand_defaults(argv: list[str]) -> list[str]:
    """Insert ``--config PIECE`` for every ``defaults:`` entry of each ``--config FILE`` (recursively, pieces first)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            path, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        for piece in config_chain(Path(path)):
            out += ["--config", str(piece)]
    return out


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Writes the resolved config.yaml into the run directory (rank 0) and logs it to W&B as ``cli_config``."""

    def save_config(self, trainer, pl_module, stage) -> None:
        if trainer.logger is not None:
            cfg = yaml.safe_load(self.parser.dump(self.config, skip_none=False, format="yaml"))
            trainer.logger.log_hyperparams({"cli_config": cfg})


EXP_OPTIONS = {  # the run's own options (``exp.*``): name -> (type, default, help)
    "name": (str, "default", "Experiment name: run directory and W&B group."),
    "root": (str, "runs", "Directory that holds one folder per experiment."),
    "project": (str, "pyramid_dm", "W&B project."),
    "group": (str | None, None, "W&B group (default: exp.name; a sweep shares one)."),
    "allow_objective_change": (bool, False, "Resume with model options that change what is optimised; recorded."),
    "stop_grace_s": (
        float,
        60.0,
        "After SIGTERM or Ctrl-C the process ends within this many seconds, whatever it waits for.",
    ),
    "max_train_flops": (float | None, None, "End training after this many training FLOPs (or max_steps, the first)."),
}


class PyramidCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name, (kind, default, text) in EXP_OPTIONS.items():
            parser.add_argument(f"--exp.{name}", type=kind, default=default, help=text)
        parser.add_argument("--defaults", type=list[str] | None, default=None, help="Config pieces loaded first.")
        for key in LINKED_FROM_DATA:
            parser.link_arguments("data", f"model.init_args.{key}", compute_fn=attrgetter(key), apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """A ``--ckpt_path`` file is read and checked (a file, a pyramid_dm checkpoint, of the config's model family)
        before Lightning reads its hyperparameters into the config, so a wrong path is one line, not a traceback."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt in (None, "last", "best", "hpc", "registry", RESUME_IF_ANY):
            return
        class_path = (self.config[sub].get("model") or {}).get("class_path", "")
        module, _, name = class_path.rpartition(".")
        family = getattr(getattr(importlib.import_module(module), name, None), "family", None) if module else None
        read_checkpoint(
            ckpt,
            "--ckpt_path",
            None if family is None else (family,),
            f"a {family} model as the config's {name}",
            mismatch_hint="; pass the config it was trained with (its run's config.yaml)",
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the checkpoint's hyperparameters into the config, importing the module its
        ``_class_path`` names; a checkpoint is data, so that class is checked first: a ``pyramid_dm`` class, or the
        very class the config names (the user's own choice), else nothing is imported and it is refused."""
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            named = read_checkpoint(ckpt, "--ckpt_path")["hyper_parameters"].get("_class_path")
            want = (self.config[sub].get("model") or {}).get("class_path")
            if named and not str(named).startswith("pyramid_dm.") and named != want:
                raise UserError(
                    f"--ckpt_path {ckpt} names the model class {named!r}, which is neither a pyramid_dm class nor the "
                    f"config's ({want}); it was not imported: use the config the run was trained with"
                )
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        # The pieces were expanded into --config arguments already; the saved config.yaml is complete without them.
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.defaults = None
        absolute_paths(config)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if getattr(self, "trainer", None) is not None:
            use_step_bounded_bar(self.trainer)

    def instantiate_classes(self) -> None:
        """As LightningCLI's, but an error about the model's size says where that size came from (it is linked from
        the data: ``data.init_args.resize``, else the shards' manifest), since the model config never states it."""
        try:
            super().instantiate_classes()
        except Exception as exc:
            error = find_user_error(exc)
            origin = size_origin(self.config[self.subcommand] if self.subcommand else self.config)
            if error is None or origin is None or f"size {origin[0]}" not in str(error):
                raise
            raise UserError(f"{one_line(error)} ({origin[1]})") from exc

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        root = Path(self.trainer.default_root_dir)
        ckpt_dirs = [cb.dirpath for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if self.trainer.global_rank == 0:  # held until this process ends: one fit per experiment directory
            self.run_lock = RunLock(root).acquire()
        if config.get("ckpt_path") is None and SLURMEnvironment.detect():
            # A requeued job (or one whose run holds Lightning's requeue checkpoint) resumes from the newest checkpoint
            # of its run: the hpc_ckpt of a SIGUSR1 requeue, or last.ckpt after a requeue that had no time to save.
            if slurm_requeued() or any(root.glob(HPC_PATTERN)):
                newest = newest_checkpoint(root, *ckpt_dirs)
                if newest is not None:
                    config["ckpt_path"] = str(newest)
                    rank_zero_info(f"SLURM job {slurm_job_id()}: resuming from {newest}")
        self.check_ckpt_path(config, root, ckpt_dirs)
        resume = config.get("ckpt_path") is not None
        changes = self.check_objective(config) if resume else {}
        for cb in self.trainer.checkpoint_callbacks:
            if not resume and isinstance(cb, ModelCheckpoint) and cb.dirpath and any(Path(cb.dirpath).glob("*.ckpt")):
                raise UserError(
                    f"{cb.dirpath} already holds checkpoints of an earlier run; resume it with --ckpt_path last, "
                    "or start a new experiment with --exp.name NEW_NAME (nothing was overwritten)"
                )
        # first, so that the restored logging step is in place before any other callback logs in the first batch
        self.trainer.callbacks[:0] = [StepBoundaryResume()]
        self.trainer.callbacks[:] = with_cost_summary(self.trainer.callbacks)
        self.trainer.callbacks += [
            RequeueAtStepBoundary(),
            StopOnSignal(grace_s=float((config.get("exp") or {}).get("stop_grace_s", 60.0))),
            LogsBeforeCheckpoints(),
            TidyCheckpoints(),
            TrainingLeft(),
            TrainingCost((config.get("exp") or {}).get("max_train_flops")),
            *([PlainProgress()] if plain_progress_wanted(self.trainer) else []),
        ]
        for logger, group, tags in self.run_loggers():
            exp = config.get("exp", {})
            logger.prepare_run(resume=resume, group=group, tags=tags, job_id=slurm_run_id(exp.get("name", "")))
        if changes:  # allowed: recorded in the run beside the config that made them
            record = {k: {"checkpoint": old, "now": new} for k, (old, new) in changes.items()}
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"resumed_with_changes": record})

    def check_objective(self, config) -> dict:
        """A resumed fit must optimise what the checkpoint was trained for: model options that differ (beyond the
        optimiser and sampling settings) are an error naming them, unless ``--exp.allow_objective_change``."""
        ckpt = config.get("ckpt_path")
        if not Path(str(ckpt)).is_file():
            return {}
        trained = read_checkpoint(ckpt, "--ckpt_path")["hyper_parameters"]
        changes = objective_changes(dict(trained), dict(self.model.hparams))
        if not changes:
            return {}
        text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        if not (config.get("exp") or {}).get("allow_objective_change"):
            raise UserError(
                f"--ckpt_path {ckpt} was trained with other model options ({text}): resuming would continue under "
                "another objective; use the run's config.yaml, or pass --exp.allow_objective_change true to "
                "fine-tune deliberately (the changes are then recorded in the run)"
            )
        rank_zero_info(f"resuming {ckpt} with changed model options (allowed): {text}")
        return changes

    def run_loggers(self):
        """(RunLogger, W&B group, tags) for each of the trainer's W&B loggers."""
        exp = self.config_init[self.subcommand].get("exp", {})
        tags = [getattr(self.model, "family", "model"), getattr(self.datamodule, "dataset_name", "data")]
        for logger in self.trainer.loggers:
            if isinstance(logger, RunLogger):
                yield logger, exp.get("group") or exp.get("name"), tags

    def before_validate(self) -> None:
        for logger, group, tags in self.run_loggers():
            logger.prepare_job(self.subcommand, group, tags)

    before_test = before_predict = before_validate  # each its own W&B run and folder, never the training's

    def check_ckpt_path(self, config, root: Path, ckpt_dirs: list) -> None:
        """``last`` is the newest complete checkpoint of the run, and an error when it has none (a typo in --exp.name
        or PYRAMID_DM_RUNS must not quietly start over); ``last-if-any`` resumes if there is one and starts fresh
        otherwise."""
        ckpt = config.get("ckpt_path")
        if ckpt in ("last", RESUME_IF_ANY):
            newest = newest_checkpoint(root, *ckpt_dirs)
            if newest is None and ckpt == "last":
                searched = ", ".join(str(d) for d in dict.fromkeys([root, *ckpt_dirs]))
                raise UserError(
                    f"--ckpt_path last: no checkpoint in {searched}; check --exp.name and --exp.root "
                    f"(PYRAMID_DM_RUNS), or pass --ckpt_path {RESUME_IF_ANY} to start fresh when there is none"
                )
            config["ckpt_path"] = None if newest is None else str(newest)


# Config values that name local files: stored absolute in the run's config.yaml and checkpoints, so that `evaluate` and
# `sample` (and a resumed fit) find them from any working directory.
PATH_KEYS = (
    "data.init_args.shards",
    "data.init_args.train_urls",
    "data.init_args.val_urls",
    "model.init_args.autoencoder_ckpt",
)


def size_origin(config) -> tuple[int, str] | None:
    """(image size, which config value set it) for errors about sizes: the model's size is linked from the data."""
    from .data.builtin import shard_location
    from .data.manifest import Manifest

    try:
        manifest = Manifest.load(shard_location(config.get("data.init_args.shards") or ""))
    except Exception:
        return None
    resize, native = config.get("data.init_args.resize"), manifest.image_size
    if resize:
        return resize, f"the image size {resize} is data.init_args.resize; the shards {manifest.path} hold {native}px"
    return native, f"the image size {native} is that of the shards, {manifest.path}"


def absolute_path(value):
    """``value`` made absolute when it is a relative local path (``builtin:``, ``pipe:`` and URLs stay as they are)."""
    if not isinstance(value, str) or not value or ":" in value or value.startswith(("/", "~")):
        return value
    return str(Path(value).absolute())


def absolute_paths(config) -> None:
    for key in PATH_KEYS:
        value = config.get(key)
        if value is not None:
            config[key] = absolute_path(value)


def _no_litlogger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def quiet() -> None:
    """Silence what a user cannot act on: Lightning's advertisement for its LitLogger, and the deprecation of
    ``LeafSpec`` that Lightning's own code triggers in torch (twice per run). Calling it again adds nothing."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_litlogger_tip)  # a set: added once
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def make_cli(subcommands: bool = True, **kwargs) -> PyramidCLI:
    """The project's LightningCLI: any LightningModule / LightningDataModule class path, OmegaConf interpolation,
    seed 0, the module's own optimizer; ``kwargs`` go to LightningCLI (``run=False, args=[...]`` for use in code)."""
    parser_kwargs = {"parser_mode": "omegaconf+", "prog": PROG, "allow_abbrev": False}
    if subcommands:  # allow_abbrev off: a misspelt option (--trainer.max_step) is an error, not a prefix (max_steps)
        parser_kwargs.update({name: {"allow_abbrev": False} for name in LIGHTNING_COMMANDS})
    return PyramidCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs=parser_kwargs,
        seed_everything_default=0,
        auto_configure_optimizers=False,  # the module configures AdamW + warm-up itself
        **kwargs,
    )


def run_lightning(argv: list[str]) -> int:
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    quiet()
    # Lightning's DDP launcher starts the other ranks by re-running sys.argv, so the expanded arguments go there.
    sys.argv[1:] = expand_defaults(argv)
    try:
        cli = make_cli(save_config_callback=LoggerSaveConfigCallback, save_config_kwargs={"overwrite": True})
    except StopRequested as stop:  # left a wait for data, or a second signal
        stop.stopper.cancel_deadline()
        print(stop, file=sys.stderr, flush=True)
        return stop.code
    stoppers = [cb for cb in getattr(getattr(cli, "trainer", None), "callbacks", []) if isinstance(cb, StopOnSignal)]
    for cb in stoppers:
        cb.cancel_deadline()
    # 130 / 143: ended by Ctrl-C / SIGTERM at a step's end, as shells and schedulers expect
    return next((cb.exit_code for cb in stoppers if cb.exit_code is not None), 0)


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError behind ``exc`` (jsonargparse and Lightning wrap errors raised while instantiating classes)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


PROG = "python -m pyramid_dm"
# Lightning's subcommands (LightningCLI parses them) and ours (module with a ``main(argv)``), one line of help each
LIGHTNING_COMMANDS = {
    "fit": "train a model from a config (--config configs/...yaml); --ckpt_path last resumes",
    "validate": "validation loss and sample quality of a checkpoint (--config, --ckpt_path)",
    "test": "Lightning's test loop over a config and checkpoint",
    "predict": "Lightning's predict loop over a config and checkpoint",
}
COMMANDS = {
    "sample": ("pyramid_dm.commands.sample", "draw images from a checkpoint with any sampler, steps and guidance"),
    "evaluate": ("pyramid_dm.commands.evaluate", "sample quality (FID-proxy, KID, ...) and cost of a checkpoint"),
    "compare": ("pyramid_dm.commands.compare", "configurations x training seeds x sampling seeds, both spreads"),
    "export": ("pyramid_dm.commands.export", "a checkpoint as a diffusers-layout folder (safetensors), no pickle"),
    "search-steps": ("pyramid_dm.commands.search_steps", "Pareto front of width policies of a step-aware supernet"),
    "views": ("pyramid_dm.commands.views", "W&B workspaces as code: list, check against a run, apply (online)"),
    "shards": ("pyramid_dm.commands.shards", "write webdataset shards from an image folder, IDX files or digits"),
    "train-classifier": ("pyramid_dm.commands.train_classifier", "train a feature classifier for the FID-proxy"),
    "bench": ("pyramid_dm.bench", "speed benchmarks: unet, ddp, fid-floor, guidance, steps (training time)"),
}


def usage() -> str:
    lines = [f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)", "", "commands:"]
    table = {**LIGHTNING_COMMANDS, **{name: text for name, (_, text) in COMMANDS.items()}}
    lines += [f"  {name:<17} {text}" for name, text in table.items()]
    lines += ["", "quickstart:", f"  {PROG} fit --config configs/quickstart.yaml"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    try:
        load_plugins()  # the user's own parts (PYRAMID_DM_PLUGINS), registered before any name is read
        if argv[0] in COMMANDS:
            return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
        if argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
            print(f"{usage()}\n\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return run_lightning(argv)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        print(f"error: {one_line(user_error)}", file=sys.stderr)
        return 2
    return 0
