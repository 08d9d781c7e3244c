"""``python -m pyramid_dm search-steps``: the Pareto front of width policies (FID-proxy vs FLOPs) for a step-aware
supernet checkpoint, by NSGA-II over a resumable study (DDSM, made multi-objective, any sampler, any family).

    python -m pyramid_dm search-steps --ckpt_path runs/x/checkpoints/last.ckpt --sampler dpmpp_2m --steps 20 \
        --trials 60 --num_samples 500 --study runs/x/search/dpmpp_2m-20

Every candidate is sampled with the same noise seeds and labels (common random numbers), so differences between
candidates are the policy's; real features come from the evaluation cache. The study directory holds the Optuna
journal (``journal.log``, appended after every trial: rerun the same command to resume; several workers, e.g. the
tasks of ``slurm/search.sbatch``, may share it), ``study.json`` (what it searches), and after every trial
``front.json``/``front.csv`` (the Pareto front), ``trials.csv``, ``policies/front-<k>.json`` (one policy file per
front point, for ``sample``/``evaluate --step_policy``) and ``pareto.png``. A W&B run per worker logs a row per trial
and the front.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

from ..checkpoints import file_sha256
from ..data.manifest import atomic_write_bytes
from ..diffusion import sampling_sigmas
from ..engine.wrappers import Widths
from ..errors import UserError
from ..eval.features import build_features, extract
from ..eval.quality import fid
from ..eval.real_features import real_features
from ..eval.report import write_csv
from ..eval.sampling import sample_with_cost
from ..eval.step_search import GENOMES, SearchSpace, front, open_study, run_search, worker_identity
from ..views import define_metrics
from .args import Parser, add_checkpoint_args, add_run_args, add_sampler_args, check_sampler_args
from .evaluate import load_for_command, resolve_data

DEFAULT_NUM_REAL = 2000


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser(
        prog="python -m pyramid_dm search-steps",
        description=__doc__.split("\n")[0],
    )
    add_checkpoint_args(p, "a step-aware supernet checkpoint (its EMA weights)")
    add_sampler_args(p, "one of {samplers}, or one per pyramid level (default: the model's)")
    p.add_argument("--genome", default="log_snr", choices=sorted(GENOMES), help="how a policy is encoded")
    p.add_argument("--breakpoints", type=int, default=3, help="log_snr genome: breakpoints K per level")
    p.add_argument("--trials", type=int, required=True, help="finished trials in the study (all workers together)")
    p.add_argument("--population", type=int, default=16, help="NSGA-II population size")
    p.add_argument("--num_samples", type=int, default=500, help="samples per candidate")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--features", default="auto", help="FID-proxy features (as evaluate)")
    p.add_argument("--real_split", default="train", choices=["train", "val"])
    p.add_argument(
        "--num_real",
        type=int,
        help=f"real images for the FID-proxy statistics (default: {DEFAULT_NUM_REAL}, or the whole split if it holds "
        "fewer)",
    )
    add_run_args(p, "the common noise seed of every candidate, and NSGA-II's")
    p.add_argument("--study", type=Path, required=True, help="study directory (shared by workers; resumable)")
    p.add_argument("--no_wandb", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    check_sampler_args(args)
    for key in ("trials", "population", "num_samples", "num_real"):
        if getattr(args, key) is not None and getattr(args, key) < 2:
            raise UserError(f"--{key} must be >= 2, got {getattr(args, key)}")
    return args


def write_outputs(study, study_dir: Path, meta: dict) -> list:
    """front.json/.csv, trials.csv, one policy file per front point and pareto.png, each written atomically."""
    from optuna.trial import TrialState

    best = front(study)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    row = lambda t: {  # noqa: E731
        "trial": t.number,
        "fid": t.values[0],
        "gflops_per_sample": t.values[1],
        **{k: v for k, v in t.user_attrs.items() if k not in ("policy", "worker")},
    }
    policies = study_dir / "policies"
    points = []
    for k, t in enumerate(best):
        policy = json.loads(t.user_attrs["policy"])
        policy["name"] = f"front-{k} (trial {t.number})"
        policy["measured"] = {
            "fid_proxy": t.values[0],
            "gflops_per_sample": t.values[1],
            **json.loads(t.user_attrs.get("measured", "{}")),
        }
        path = policies / f"front-{k}.json"
        policies.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(policy, indent=1) + "\n").encode())
        points.append({**row(t), "policy_file": str(path)})
    atomic_write_bytes(study_dir / "front.json", json.dumps({"meta": meta, "front": points}, indent=1).encode())
    write_csv(study_dir / "front.csv", points)
    write_csv(study_dir / "trials.csv", [row(t) for t in done])
    if done:
        plot_front(done, best, study_dir / "pareto.png", meta)
    return points


def plot_front(done: list, best: list, path: Path, meta: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=12, c="0.6", label="trials")
    pts = sorted((t.values[1], t.values[0]) for t in best)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "k.--", lw=1, label="Pareto front")
    for t in done:
        name = t.user_attrs.get("baseline", "")
        if name.startswith("uniform"):
            full = name == f"uniform {max(meta['widths']):g}"
            ax.scatter(
                t.values[1],
                t.values[0],
                marker="*" if full else "s",
                s=90 if full else 40,
                c="C3" if full else "C0",
                zorder=3,
                label="full model" if full else None,
            )
            ax.annotate(
                name.split()[1], (t.values[1], t.values[0]), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
        elif name.startswith("pilot"):
            ax.scatter(t.values[1], t.values[0], marker="^", s=30, c="C2", zorder=3)
    ax.scatter([], [], marker="s", c="C0", label="uniform width")
    ax.scatter([], [], marker="^", c="C2", label="pilot window (DDSM)")
    ax.set_xlabel("GFLOPs per sample")
    ax.set_ylabel(f"FID-proxy ({meta['features']})")
    budget = "/".join(map(str, meta["samplers"])) + " " + "/".join(map(str, meta["steps"]))
    ax.set_title(f"width policies: {budget} steps, {len(done)} trials", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def start_wandb(args, meta: dict, config: dict | None):
    import wandb

    from ..loggers import wandb_offline

    exp = (config or {}).get("exp") or {}
    return wandb.init(
        project=exp.get("project", "pyramid_dm"),
        group=exp.get("group") or exp.get("name"),
        job_type="search-steps",
        name=f"search-{args.study.name}-{worker_identity().replace(':', '-')}",
        dir=str(args.study),
        mode="offline" if wandb_offline(None) else "online",
        config={**meta, "worker": worker_identity()},
        tags=["search-steps"],
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    config_path, config, ckpt, device, model = load_for_command(args, "search-steps")
    if model.widths is None:
        raise UserError(
            f"{args.ckpt_path} is not a step-aware supernet (trained without model.init_args.step_aware): it runs at "
            "one width only, there is nothing to search"
        )
    samplers, steps = model.plan.resolve(args.sampler, args.steps, ("--sampler", "--steps"))
    manifest, image_size = resolve_data(config, ckpt, args.ckpt_path, config_path, model)
    available = manifest.count(args.real_split)
    if args.num_real is None:  # the default serves the project's own small data sets too
        args.num_real = min(DEFAULT_NUM_REAL, available)
        if available < DEFAULT_NUM_REAL:
            print(f"search-steps: the {args.real_split} split holds {available} images; using all of them "
                  f"(default --num_real {DEFAULT_NUM_REAL})", file=sys.stderr)  # fmt: skip
    if args.num_real > available:
        raise UserError(
            f"--num_real {args.num_real}: the {args.real_split} split of {manifest.path} holds {available} images; "
            f"ask for at most {available}"
        )
    grids = [model.plan.grid(s, args.discretization) for s in samplers]
    sigmas = [sampling_sigmas(model.schedules[lv], steps[lv], grids[lv]).tolist() for lv in range(model.num_levels)]
    try:
        space = SearchSpace(list(model.widths), sigmas, args.genome, args.breakpoints, list(samplers))
    except ValueError as e:
        raise UserError(str(e)) from None
    extractor = build_features(args.features, manifest.name).to(device)
    sha = file_sha256(args.ckpt_path)
    meta = {
        "checkpoint_sha256": sha,
        "widths": list(model.widths),
        "level_shapes": [list(s) for s in model.level_shapes],
        "samplers": list(samplers),
        "steps": [int(n) for n in steps],
        "grids": grids,
        "genome": args.genome,
        "breakpoints": args.breakpoints if GENOMES[args.genome].reads_breakpoints else None,
        "objectives": ["fid", "gflops_per_sample"],
        "features": extractor.name,
        "num_samples": args.num_samples,
        "real_split": args.real_split,
        "num_real": args.num_real,
        "seed": args.seed,
        "dataset": manifest.name,
    }
    try:
        study = open_study(args.study, meta, space, args.population, args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    real = real_features(manifest, args.real_split, extractor, image_size, args.num_real, not args.no_progress)
    sampler_arg = samplers[0] if model.num_levels == 1 else list(samplers)
    steps_arg = int(steps[0]) if model.num_levels == 1 else [int(n) for n in steps]
    record = {"checkpoint_sha256": sha, "widths": list(model.widths), "level_shapes": meta["level_shapes"]}
    budget = {"samplers": list(samplers), "steps": meta["steps"], "grids": grids}

    def objective(policy) -> dict:
        policy.model, policy.budget = record, {**policy.budget, **budget}
        images, cost = sample_with_cost(
            model,
            sampler_arg,
            steps_arg,
            args.num_samples,
            args.batch_size,
            args.seed,
            False,
            discretization=args.discretization,
            wrappers=[Widths(policy)],
            any_sampler=args.any_sampler,
        )
        measured = {"ms_per_sample": cost.seconds_per_sample * 1e3, "mean_width": cost.mean_width, "nfe": cost.nfe}
        return {
            "fid": fid(real, extract(extractor, images)),
            "gflops_per_sample": cost.gflops_per_sample,
            **measured,
            "measured": json.dumps(measured),
            "policy": json.dumps(policy.as_dict()),
        }

    run = None if args.no_wandb else start_wandb(args, meta, config)
    defined: set[str] = set()

    def on_trial(trial, policy, result) -> None:
        write_outputs(study, args.study, meta)
        if run is not None:
            keys = ("fid", "gflops_per_sample", "ms_per_sample", "mean_width")
            row = {f"trial/{k}": result[k] for k in keys} | {"trial/number": trial.number}
            define_metrics(run, row, defined)  # the summary keeps the best FID-proxy, too
            run.log(row)

    start = time.perf_counter()
    done = run_search(study, space, objective, args.trials, on_trial, not args.no_progress)
    points = write_outputs(study, args.study, meta)
    if run is not None:
        import wandb

        columns = list(dict.fromkeys(k for p in points for k in p))
        run.log({"search/front": wandb.Table(columns=columns, data=[[p.get(c) for c in columns] for p in points])})
        if (args.study / "pareto.png").is_file():
            run.log({"search/pareto": wandb.Image(str(args.study / "pareto.png"))})
        run.finish()
    for p in points:
        print(
            f"front: FID-proxy {p['fid']:8.3f}  {p['gflops_per_sample']:8.3f} GFLOPs/sample  "
            f"mean width {p.get('mean_width') or 0:.2f}  {p.get('baseline', '')}  {p['policy_file']}"
        )
    print(
        f"search-steps: {done} trial(s) by this worker in {time.perf_counter() - start:.0f} s; study {args.study}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
