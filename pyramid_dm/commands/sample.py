"""``python -m pyramid_dm sample``: draw images from a checkpoint with any sampler, grid and guidance.

    python -m pyramid_dm sample --ckpt_path runs/quickstart/checkpoints/last.ckpt \
        --sampler dpmpp_2m --steps 20 --guidance 3.0 --num_samples 64 --out samples/

Writes one PNG per sample (``000000.png`` ...), ``grid.png`` and ``samples.json`` (sampler, steps, grid, NFE per
sample, seed, guidance, labels, wall time). The noise of batch b depends only on (seed, b): the same command
reproduces the same images.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from ..engine.load import build_model, load_checkpoint
from ..engine.wrappers import Guidance, Widths
from ..errors import UserError
from ..eval.sampling import generate
from ..images import make_grid, save_png, to_uint8
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser(
        prog="python -m pyramid_dm sample",
        description=__doc__.split("\n")[0],
    )
    add_checkpoint_args(p, "checkpoint to sample from (its EMA weights)", config=False)
    add_sampler_args(p, "one of {samplers}, or one per pyramid level (default: the model's)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--guidance_interval", type=float, nargs=2, metavar=("LO", "HI"), help="guide for sigma in (LO, HI]")
    p.add_argument("--guidance_rescale", type=float, default=0.0, help="CFG rescale phi in [0, 1] (Lin et al.)")
    add_classifier_args(p)
    add_policy_args(p)
    p.add_argument("--labels", type=int, nargs="+", help="class labels, repeated to --num_samples (default: in turn)")
    p.add_argument(
        "--option", type=sampler_option, action="append", default=[], help="sampler option KEY=VALUE, e.g. eta=1"
    )
    p.add_argument("--num_samples", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    add_run_args(p)
    p.add_argument("--no_ema", action="store_true", help="use the raw instead of the EMA weights")
    p.add_argument(
        "--out",
        type=Path,
        help="output directory (default: the run's sampled/<checkpoint>-<sampler>-<steps>-...)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace samples already in --out")
    args = p.parse_args(argv)
    check_sampler_args(args)
    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError(f"--num_samples and --batch_size must be >= 1, got {args.num_samples}, {args.batch_size}")
    return args


def sample_labels(model, args, guide=None) -> torch.Tensor | None:
    """The classes to draw: ``--labels``, else the model's (or, for an unconditional model guided by a classifier,
    the classifier's) classes in turn."""
    classes, who = (model.num_classes, "the model") if model.num_classes else (0, "")
    if not classes and guide is not None:
        classes, who = guide.num_classes, "the classifier"
    if args.labels is None:
        if who == "the classifier":
            return guide.labels(0, args.num_samples)
        return model.sample_labels(0, args.num_samples)
    if not classes:
        raise UserError(f"--labels given but {args.ckpt_path} is an unconditional model")
    bad = [c for c in args.labels if not 0 <= c < classes]
    if bad:
        raise UserError(f"--labels {bad} out of range: {who} has classes 0..{classes - 1}")
    return torch.tensor(args.labels).repeat(-(-args.num_samples // len(args.labels)))[: args.num_samples]


def default_out(ckpt_path: str, sampler: list[str], steps: list[int], args, global_step=None) -> Path:
    """Next to the run (``runs/<exp>/sampled/...``), named by what was drawn; never the current directory."""
    ckpt = Path(ckpt_path).resolve()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    name = f"{checkpoint_label(ckpt, global_step)}-{'+'.join(dict.fromkeys(sampler))}-{'.'.join(map(str, steps))}"
    name += f"-g{args.guidance:g}" * (args.guidance != 1.0)
    name += f"-cg{args.classifier_scale:g}" * bool(args.classifier) + f"-seed{args.seed}"
    if args.step_policy:
        name += f"-policy_{Path(args.step_policy).stem}"
    return run / "sampled" / name


def one_or_list(values: list):
    return values[0] if len(values) == 1 else values


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ckpt = load_checkpoint(args.ckpt_path)
    device = pick_device(args.device)
    model = build_model(ckpt, args.ckpt_path, None, device, ema=not args.no_ema, command="sample")
    guide = load_guide(args, model, ckpt, device)
    labels = sample_labels(model, args, guide)
    sampler, steps = model.plan.resolve(args.sampler, args.steps, ("--sampler", "--steps"))
    policy = load_policy(args, model, sampler, steps)
    args.out = args.out or default_out(args.ckpt_path, sampler, steps, args, ckpt.get("global_step"))
    if (args.out / "samples.json").exists() and not args.overwrite:
        raise UserError(f"{args.out} already holds samples.json; pass --overwrite to replace it, or choose --out")
    options = dict(args.option)
    guidance = Guidance(args.guidance, args.guidance_interval, args.guidance_rescale)
    wrappers = [guidance, *([guide] if guide else []), *([Widths(policy)] if policy else [])]

    batches = list(range(-(-args.num_samples // args.batch_size)))
    try:
        images, count, seconds = generate(
            model,
            sampler,
            steps,
            batches,
            args.batch_size,
            args.seed,
            progress=False,
            labels=labels,
            wrappers=wrappers,
            discretization=args.discretization,
            any_sampler=args.any_sampler,
            **options,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    nfe, width_calls = count.nfe, None
    if policy is not None:  # network calls per sample at each width (per level), as the policy ran them
        per_sample = [{w: c / count.num_samples for w, c in per.items()} for per in wrappers[-1].calls]
        width_calls = [{w if isinstance(w, str) else f"{w:g}": c for w, c in per.items()} for per in per_sample]
    images = images[: args.num_samples]

    args.out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for i, px in enumerate(pixels):
        Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px).save(args.out / f"{i:06d}.png")
    save_png(make_grid(images), args.out / "grid.png")
    record = {
        "ckpt_path": str(args.ckpt_path),
        "global_step": ckpt.get("global_step"),
        "model": ckpt["pyramid_dm"].get("class_path", "").rpartition(".")[2],
        "family": model.family,
        "ema": not args.no_ema,
        "levels": [list(shape) for shape in model.level_shapes],
        # one value for a single-level model, one per level (coarse first) for a pyramid
        "sampler": sampler[0] if model.num_levels == 1 else sampler,
        "steps": steps[0] if model.num_levels == 1 else steps,
        "discretization": args.discretization or one_or_list([model.plan.grid(n) for n in sampler]),
        "sampler_options": options,
        "step_policy": args.step_policy,
        "width_calls": width_calls,
        "nfe": sum(nfe),
        "classifier_calls": guide.calls if guide else 0,
        "level_nfe": nfe,
        "seed": args.seed,
        "guidance": args.guidance,
        "guidance_rescale": args.guidance_rescale,
        **({"guidance_interval": tuple(args.guidance_interval)} if args.guidance_interval else {}),
        "classifier": guide and guide.path,
        "classifier_scale": guide and guide.scale,
        "labels": None if labels is None else labels.tolist(),
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "wall_seconds": round(seconds, 3),
        "seconds_per_sample": seconds / args.num_samples,
        "device": str(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (args.out / "samples.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{args.num_samples} samples, {'/'.join(sampler)} {'/'.join(map(str, steps))} steps, NFE {sum(nfe)}/sample, "
        f"guidance {args.guidance}" + (f", classifier guidance {guide.scale:g}" if guide else "") + ": "
        f"{seconds:.1f} s -> {args.out}",
        file=sys.stderr,
    )
    return 0
