"""``python -m pyramid_dm evaluate``: sample quality (FID/KID/precision/recall) and cost of a checkpoint over a grid
of samplers x step counts.

    python -m pyramid_dm evaluate --ckpt_path runs/quickstart/checkpoints/last.ckpt \
        --sampler ddim ddpm --steps 10 20 50 --num_samples 2000

``--config`` defaults to the run's saved ``config.yaml`` (next to ``checkpoints/``); the data section names the real
shards. Writes ``results.json``, ``results.csv`` and ``pareto.png`` into ``--out`` (default: the run's
``eval/<checkpoint>-<features>-<samplers>-<steps>-n<num>-seed<seed>``, named by what was evaluated)
and logs them to W&B (a run of job type ``evaluate`` in the experiment's group).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time
from pathlib import Path

import torch

from ..config import load_config
from ..data.builtin import PREFIX as BUILTIN_PREFIX
from ..data.builtin import shard_location
from ..data.manifest import Manifest, ShardError
from ..diffusion import sample as run_sampler
from ..diffusion import steps_for_nfe
from ..engine import per_level
from ..engine.load import build_model, load_checkpoint
from ..engine.wrappers import Guidance, Widths
from ..errors import UserError
from ..eval.evaluate import evaluate_grid
from ..eval.features import build_features
from ..eval.image_metrics import IMAGE_METRICS, real_images
from ..eval.real_features import real_features
from ..eval.report import pareto_plot, write_table
from .args import (
    Parser,
    add_checkpoint_args,
    add_classifier_args,
    add_run_args,
    add_sampler_args,
    check_sampler_args,
    checkpoint_label,
    load_guide,
    pick_device,
    sampler_option,
)
from .policy_args import add_policy_args, load_policy


def check_sampler_options(model, samplers: list, steps: list, args) -> None:
    """Run every sampler of the sweep with its ``--option``s on one number and a stand-in denoiser, so that an option
    out of range (a Langevin step size, an SNR) is refused before real features are computed and samples drawn."""
    options = dict(args.option)
    for sampler in samplers:
        for n in steps:
            for level, (name, k) in enumerate(zip(*model.plan.resolve(sampler, n))):
                if args.nfe:
                    k = steps_for_nfe(name, k, **options)
                try:
                    run_sampler(
                        lambda x, sigma, **cond: torch.zeros_like(x),
                        torch.zeros(1, 1, 1, 1),
                        model.schedules[level],
                        name,
                        k,
                        discretization=model.plan.grid(name, args.discretization),
                        **options,
                    )
                except ValueError as e:
                    given = " ".join(f"{a}={b}" for a, b in args.option)
                    raise UserError(f"--sampler {name} --option {given}: {e}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser(
        prog="python -m pyramid_dm evaluate",
        description=__doc__.split("\n")[0],
    )
    add_checkpoint_args(p, "checkpoint to evaluate (its EMA weights)")
    steps = p.add_mutually_exclusive_group()
    add_sampler_args(p, "one or more of {samplers} (default: the model's own, per level)", steps)
    steps.add_argument("--nfe", nargs="+", type=int, help="one or more NFE budgets (Heun: (NFE + 1) // 2 steps)")
    steps.add_argument(
        "--level_steps", nargs="+", type=int, help="a pyramid's steps per level, coarse first (one evaluation)"
    )
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    add_classifier_args(p)
    add_policy_args(p)
    p.add_argument(
        "--option", type=sampler_option, action="append", default=[], help="sampler option KEY=VALUE, e.g. snr=0.1"
    )
    p.add_argument("--num_samples", type=int, default=1000, help="generated samples per sampler x steps")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument(
        "--features",
        default="auto",
        help="auto, a classifier name (fmnist_clf), a .pt file, random, inception or inception:/path/to/weights.pth",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=[],
        choices=sorted(IMAGE_METRICS),
        help="image metrics besides the feature ones: swd (per Laplacian level), spectrum (per frequency band)",
    )
    p.add_argument("--real_split", default="train", choices=["train", "val"], help="real images to compare with")
    p.add_argument("--num_real", type=int, default=None, help="real images used (default: the whole split)")
    p.add_argument("--kid_subset_size", type=int, default=1000)
    add_run_args(p)
    p.add_argument("--out", type=Path, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--no_wandb", action="store_true", help="do not log to W&B")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    check_sampler_args(args, steps=False)
    if args.nfe:
        args.steps = args.nfe
    if args.level_steps:
        args.steps = [args.level_steps]
    if args.steps and min(min(n) if isinstance(n, list) else n for n in args.steps) < 1:
        raise UserError(f"--{'nfe' if args.nfe else 'steps'} must be >= 1, got {args.steps}")
    if args.num_samples < 2:
        raise UserError(f"--num_samples must be >= 2, got {args.num_samples}")
    return args


def resolve_data(config: dict | None, ckpt: dict, ckpt_path: str, config_path=None, model=None) -> tuple[Manifest, int]:
    """The real shard set and the image size the model was trained at; with ``model``, checked to hold the classes a
    class-conditional model was trained on."""
    data = ((config or {}).get("data") or {}).get("init_args")
    source = f"the config {config_path}"
    if not data:
        data, source = ckpt.get("datamodule_hyper_parameters") or {}, f"the checkpoint {ckpt_path}"
    shards = data.get("shards")
    if not shards:
        raise UserError(f"no data.init_args.shards in the config or in {ckpt_path}; pass --config with a data section")
    try:
        manifest = Manifest.load(shard_location(shards, progress=True))
    except ShardError as exc:
        if Path(shards).is_absolute() or shards.startswith(BUILTIN_PREFIX) or Path(shards).expanduser().exists():
            raise
        raise UserError(  # a run trained before paths were saved absolute, read from another directory
            f"data.init_args.shards = {shards!r}, read from {source}, does not exist as seen from {Path.cwd()} "
            "(a relative path is read from the current directory); run from the directory the run was trained in, "
            "or pass --config with a data section that names the shards"
        ) from exc
    if model is not None and model.num_classes and manifest.num_classes != model.num_classes:
        raise UserError(
            f"the model was trained on {model.num_classes} classes but the shards {manifest.path} (from {source}) hold "
            f"{manifest.num_classes}: evaluate against the data it was trained on (--config with its data section)"
        )
    return manifest, int(data.get("resize") or manifest.image_size)


def default_config(ckpt_path: str) -> Path | None:
    run_config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
    return run_config if run_config.is_file() else None


def sweep(model, args) -> tuple[list, list]:
    """The samplers and step counts to evaluate: those given, and the model's own for what is not (its sampler and
    budget, per level for a pyramid), so that a plain ``evaluate`` measures the model as it samples by default."""
    own_samplers, own_steps = model.plan.resolve()
    one = lambda values: values[0] if len(set(values)) == 1 else list(values)  # noqa: E731
    samplers = args.sampler or [one(own_samplers)]
    steps = args.steps or [own_steps[0] if model.num_levels == 1 else list(own_steps)]
    own = [f"sampler {'/'.join(own_samplers)}"] * (not args.sampler) + [f"steps {'/'.join(map(str, own_steps))}"] * (
        not args.steps
    )
    if own:
        per = " (per level, coarse first)" if model.num_levels > 1 else ""
        print(f"evaluate: the model's own {' and '.join(own)}{per}", file=sys.stderr)
    return samplers, steps


def sweep_name(args, space: str, samplers: list, steps: list, global_step=None) -> str:
    """The folder name of an evaluation: what was evaluated, so that sweeps of one checkpoint with other samplers,
    budgets, guidance or references sit side by side (``last-step3000-digits_clf-ddim+dpmpp_2m-10+20-n1000-seed0``)."""
    join = lambda values: "+".join(".".join(map(str, v)) if isinstance(v, list) else str(v) for v in values)  # noqa: E731
    label = checkpoint_label(args.ckpt_path, global_step)
    parts = [label, space, join(samplers), ("nfe" if args.nfe else "") + join(steps)]
    parts += [f"g{args.guidance:g}"] * (args.guidance != 1.0) + [args.discretization] * bool(args.discretization)
    parts += [f"cg{args.classifier_scale:g}"] * bool(args.classifier)
    if args.step_policy:
        parts.append(f"policy_{Path(args.step_policy).stem}")
    parts += [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in args.option]
    parts += [f"n{args.num_samples}", f"seed{args.seed}"]
    parts += [f"real-{args.real_split}{args.num_real or ''}"] * (args.real_split != "train" or bool(args.num_real))
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", "-".join(parts))[:200]


def log_to_wandb(rows: list[dict], meta: dict, png: Path, out: Path, config: dict | None) -> str | None:
    import wandb

    from ..loggers import wandb_offline

    exp = (config or {}).get("exp") or {}
    run = wandb.init(
        project=exp.get("project", "pyramid_dm"),
        group=exp.get("group") or exp.get("name"),
        job_type="evaluate",
        name=f"eval-{out.name}",
        dir=str(out),
        mode="offline" if wandb_offline(None) else "online",
        config=meta,
        tags=["evaluate", meta["features"]],
    )
    columns = list(dict.fromkeys(k for row in rows for k in row))
    run.log(
        {
            "eval/results": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows]),
            "eval/pareto": wandb.Image(str(png)),
        }
    )
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("steps", "batch_size"):
                run.summary[f"{row['sampler']}-{row['steps']}/{key}"] = value
    run.finish()
    return run.id


def load_for_command(args, command: str = "evaluate"):
    """(config path, config, checkpoint, device, model) of a command's ``--ckpt_path`` / ``--config`` / ``--device``
    (the run's saved config when no ``--config`` is given)."""
    config_path = args.config or default_config(args.ckpt_path)
    config = load_config(config_path, compose=args.config is not None) if config_path else None
    ckpt = load_checkpoint(args.ckpt_path)
    device = pick_device(args.device)
    model = build_model(ckpt, args.ckpt_path, config, device, command=command, config_named=bool(args.config))
    return config_path, config, ckpt, device, model


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    config_path, config, ckpt, device, model = load_for_command(args)
    if args.level_steps:
        per_level("--level_steps", args.level_steps, model.num_levels)
    samplers, steps = sweep(model, args)
    manifest, image_size = resolve_data(config, ckpt, args.ckpt_path, config_path, model)
    if (manifest.channels, image_size) != model.image_shape[:2]:
        raise UserError(
            f"{manifest.path} gives {manifest.channels}x{image_size}x{image_size} images but {args.ckpt_path} "
            f"generates {model.image_shape}; point --config at the data it was trained on"
        )
    guide = load_guide(args, model, ckpt, device, manifest)
    check_sampler_options(model, samplers, steps, args)
    policy = load_policy(args, model)
    if policy is not None and policy.kind == "per_step":  # it serves one budget: exactly that one
        per = lambda v: v if isinstance(v, list) else [v] * model.num_levels  # noqa: E731
        if len(samplers) != 1 or len(steps) != 1 or args.nfe:
            raise UserError(f"--step_policy {args.step_policy} is per_step: evaluate one --sampler and --steps")
        load_policy(args, model, per(samplers[0]), per(steps[0]))
    extractor = build_features(args.features, manifest.name).to(device)
    space = extractor.name
    if args.features == "auto" and space == "random":
        print(
            f"evaluate: no classifier for the data set {manifest.name!r}: features random (fixed random conv features, "
            "for comparisons within this data set only; train one with train-classifier for a FID-proxy)",
            file=sys.stderr,
        )
    name = sweep_name(args, space, samplers, steps, ckpt.get("global_step"))
    out = args.out or Path(args.ckpt_path).resolve().parent.parent / "eval" / name
    if (out / "results.json").exists() and not args.overwrite:
        raise UserError(
            f"{out} already holds the results of this evaluation; pass --overwrite to replace them, or choose --out"
        )

    start = time.perf_counter()
    real = real_features(manifest, args.real_split, extractor, image_size, args.num_real, not args.no_progress)
    reference = None
    if args.metrics:  # as many real images as samples (SWD compares sets of one size), at most the split
        count = min(args.num_samples, args.num_real or manifest.count(args.real_split))
        reference = real_images(manifest, args.real_split, image_size, count)
    rows = evaluate_grid(
        model,
        extractor,
        real,
        samplers,
        steps,
        args.num_samples,
        args.batch_size,
        args.seed,
        args.kid_subset_size,
        not args.no_progress,
        nfe_budgets=bool(args.nfe),
        discretization=args.discretization,
        any_sampler=args.any_sampler,
        sampler_options=dict(args.option),
        wrappers=[Guidance(args.guidance), *([guide] if guide else []), *([Widths(policy)] if policy else [])],
        metrics=args.metrics,
        real_images=reference,
    )
    meta = {
        "ckpt_path": str(args.ckpt_path),
        "global_step": ckpt.get("global_step"),
        "config": str(config_path) if config_path else None,
        "model": ckpt["pyramid_dm"].get("class_path", "").rpartition(".")[2],
        "family": model.family,
        "dataset": manifest.name,
        "shards": str(manifest.path),
        "image_size": image_size,
        "features": space,
        "real_split": args.real_split,
        "num_real": len(real),
        "metrics": list(args.metrics),
        "seed": args.seed,
        "guidance": args.guidance,
        "classifier": args.classifier,
        "classifier_scale": args.classifier_scale if args.classifier else None,
        "sampler_options": dict(args.option),
        "step_policy": args.step_policy,
        "steps_are_nfe_budgets": bool(args.nfe),
        "device": str(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    json_path, csv_path = write_table(rows, meta, out)
    title = f"{manifest.name}: {Path(args.ckpt_path).name}"
    png = pareto_plot(rows, f"fid_{space}", out / "pareto.png", title=title)
    for key in [k for k in rows[0] if k in ("swd_mean", "spectrum_mean")]:  # one front per image metric
        pareto_plot(rows, key, out / f"pareto-{key}.png", title=title)
    if not args.no_wandb:
        meta["wandb_run_id"] = log_to_wandb(rows, meta, png, out, config)
        write_table(rows, meta, out)
    for row in rows:
        print(
            f"{row['sampler']:>6} {str(row['steps']):>4} steps  NFE {row['nfe']:>4}  "
            f"fid_{space} {row[f'fid_{space}']:8.3f}  "
            f"kid {row[f'kid_{space}']:.4f}  {row['gflops_per_sample']:8.2f} GFLOPs/sample  "
            + "".join(f"{k} {row[k]:.2f}  " for k in ("swd_mean", "spectrum_mean") if k in row)
            + f"{row['seconds_per_sample'] * 1e3:7.2f} ms/sample"
        )
    print(f"wrote {json_path}, {csv_path}, {png}", file=sys.stderr)
    return 0
