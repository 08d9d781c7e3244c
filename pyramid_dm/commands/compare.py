"""``python -m pyramid_dm compare RUN [RUN ...] --out DIR``: configurations x training seeds x sampling seeds, with
both spreads, against training FLOPs and sampling FLOPs.

    python -m pyramid_dm compare runs/pixel-seed0 runs/pixel-seed1 runs/pyramid-seed0 runs/pyramid-seed1 \
        --out runs/compare --train_flops 5e13 --sampling_seeds 0 1 -- --sampler dpmpp_2m --steps 10 20 --metrics swd

A RUN is a run directory (``exp.root/exp.name``) or a checkpoint file. Runs are grouped into configurations by name:
``pixel-seed0`` and ``pixel-seed1`` are the configuration ``pixel`` trained with seeds 0 and 1 (the training seed is
the run's ``seed_everything``, else the ``-seed<N>`` suffix). With ``--train_flops`` each run is evaluated at its
checkpoint nearest that training-FLOPs budget (the ``training_cost`` every checkpoint records); else at
``last.ckpt``. Everything after ``--`` goes to ``evaluate`` (samplers, steps, number of samples, features,
``--metrics``), once per run and sampling seed, into ``OUT/<run>-sample<seed>`` (kept and reused: a compare that
stopped goes on where it was; ``--overwrite`` redoes them).

Writes ``compare.json`` / ``compare.csv`` (one row per run x sampling seed x sampler x steps, with the run's training
FLOPs), ``summary.csv`` and ``summary.md`` (per configuration x sampler x steps: the mean of every metric, the
sampling spread = the largest range over sampling seeds of one trained model, the training spread = the range of
the training seeds' means, and their larger, the noise), and ``fronts.png``: quality against training FLOPs and
against sampling FLOPs per sample, each with its Pareto front. Two configurations differ "by more than noise" only if
their means differ by more than the larger noise of the two; ``summary.md`` says which pairs do.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import sys
from pathlib import Path

import torch
import yaml

from ..data.manifest import atomic_write_bytes
from ..errors import UserError
from ..eval.report import pareto_front, write_csv
from . import evaluate
from .args import Parser

SEED_SUFFIX = re.compile(r"-seed(\d+)$")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, passed = argv, []
    if "--" in argv:
        i = argv.index("--")
        own, passed = argv[:i], argv[i + 1 :]
    p = Parser(
        prog="python -m pyramid_dm compare",
        description=__doc__.split("\n")[0],
    )
    p.add_argument("runs", nargs="+", type=Path, help="run directories or checkpoint files")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--train_flops", type=float, help="evaluate each run at its checkpoint nearest this budget")
    p.add_argument("--sampling_seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default 0 1)")
    p.add_argument("--quality", help="the metric of the summary's verdicts and the fronts (default: fid_<features>)")
    p.add_argument("--overwrite", action="store_true", help="evaluate again what OUT already holds")
    args = p.parse_args(own)
    for flag in ("--ckpt_path", "--out", "--seed", "--overwrite"):
        if flag in passed:
            raise UserError(f"compare sets evaluate's {flag} itself; leave it out after --")
    if len(args.sampling_seeds) != len(set(args.sampling_seeds)):
        raise UserError(f"--sampling_seeds must differ, got {args.sampling_seeds}")
    return args, passed


def training_cost(path: Path) -> dict | None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    cost = ckpt.get("training_cost")
    return None if cost is None else {**cost, "step": ckpt.get("global_step", cost.get("step"))}


def pick_checkpoint(run: Path, budget: float | None) -> tuple[Path, dict | None]:
    """The checkpoint of ``run`` to evaluate, and its ``training_cost`` record."""
    if run.is_file():
        return run, training_cost(run)
    folder = run / "checkpoints"
    if not folder.is_dir():
        raise UserError(f"{run} is neither a checkpoint file nor a run directory with checkpoints/")
    if budget is None:
        last = folder / "last.ckpt"
        if not last.is_file():
            raise UserError(f"{run} has no checkpoints/last.ckpt; name a checkpoint file instead")
        return last, training_cost(last)
    costs = {path: training_cost(path) for path in sorted(folder.glob("*.ckpt"))}
    known = {path: cost for path, cost in costs.items() if cost is not None}
    if not known:
        raise UserError(
            f"--train_flops: no checkpoint in {folder} records its training FLOPs (training_cost; runs trained before "
            "it was kept do not): evaluate them by checkpoint file"
        )
    path = min(known, key=lambda p: (abs(known[p]["flops"] - budget), -known[p]["step"]))
    return path, known[path]


def run_identity(run: Path, ckpt: Path) -> tuple[str, str, int | None]:
    """(run name, configuration, training seed) of a run."""
    folder = run if run.is_dir() else ckpt.resolve().parent.parent
    name = folder.name if run.is_dir() else f"{folder.name}/{ckpt.stem}"
    config = folder / "config.yaml"
    seed = None
    if config.is_file():
        seed = (yaml.safe_load(config.read_text()) or {}).get("seed_everything")
    suffix = SEED_SUFFIX.search(folder.name)
    if seed in (None, True) and suffix:
        seed = int(suffix[1])
    return name, SEED_SUFFIX.sub("", folder.name), seed if isinstance(seed, int) else None


def spreads(values: dict) -> tuple[float, float | None]:
    """(sampling spread, training spread) of ``{training seed: [value per sampling seed]}``: the largest range over
    the sampling seeds of one trained model, and the range of the training seeds' means (None with one seed)."""
    sampling = max(max(v) - min(v) for v in values.values())
    means = [statistics.mean(v) for v in values.values()]
    return sampling, (max(means) - min(means)) if len(means) > 1 else None


def summarise(rows: list[dict], metrics: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["configuration"], row["sampler"], str(row["steps"])), []).append(row)
    out = []
    for (config, sampler, steps), members in groups.items():
        entry = {"configuration": config, "sampler": sampler, "steps": steps}
        entry["training_seeds"] = len({r["training_seed"] for r in members})
        entry["sampling_seeds"] = len({r["sampling_seed"] for r in members})
        known = [r["train_flops"] for r in members if r["train_flops"] is not None]
        entry["train_flops"] = statistics.mean(known) if known else None
        entry["gflops_per_sample"] = statistics.mean(r["gflops_per_sample"] for r in members)
        entry["nfe"] = members[0].get("nfe")
        for metric in metrics:
            per_seed: dict = {}
            for r in members:
                per_seed.setdefault(r["training_seed"], []).append(r[metric])
            sampling, training = spreads(per_seed)
            entry[metric] = statistics.mean(v for vs in per_seed.values() for v in vs)
            entry[f"{metric}_sampling_spread"] = sampling
            entry[f"{metric}_training_spread"] = training
            entry[f"{metric}_noise"] = max(sampling, training or 0.0)
        out.append(entry)
    return out


def verdicts(summary: list[dict], quality: str) -> list[str]:
    """Each pair of configurations at one sampler and step count: which is better by more than the larger noise."""
    lines = []
    by_setting: dict[tuple, list[dict]] = {}
    for entry in summary:
        by_setting.setdefault((entry["sampler"], entry["steps"]), []).append(entry)
    for (sampler, steps), entries in by_setting.items():
        entries = sorted(entries, key=lambda e: e[quality])
        for i, a in enumerate(entries):
            for b in entries[i + 1 :]:
                gap, noise = b[quality] - a[quality], max(a[f"{quality}_noise"], b[f"{quality}_noise"])
                word = "better than" if gap > noise else "within noise of"
                one_seed = a[f"{quality}_training_spread"] is None or b[f"{quality}_training_spread"] is None
                caveat = " (sampling noise only: one training seed, the training spread is unknown)" * one_seed
                lines.append(
                    f"- {sampler} {steps} steps: {a['configuration']} ({a[quality]:.3f}) is {word} "
                    f"{b['configuration']} ({b[quality]:.3f}): gap {gap:.3f}, noise {noise:.3f}{caveat}"
                )
    return lines


def markdown(summary: list[dict], quality: str, metrics: list[str]) -> str:
    head = ["configuration", "sampler", "steps", "seeds (train x sample)", "training TFLOPs", "GFLOPs/sample"]
    head += [f"{m} (sampling, training spread)" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [e["configuration"], e["sampler"], e["steps"], f"{e['training_seeds']} x {e['sampling_seeds']}"]
        cells += [
            "-" if e["train_flops"] is None else f"{e['train_flops'] / 1e12:.2f}",
            f"{e['gflops_per_sample']:.2f}",
        ]
        for m in metrics:
            training = e[f"{m}_training_spread"]
            spread = f"{e[f'{m}_sampling_spread']:.3f}, " + ("-" if training is None else f"{training:.3f}")
            cells.append(f"{e[m]:.3f} ({spread})")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", f"Verdicts on {quality} (a difference counts only above the larger noise of the two):", ""]
    return "\n".join(lines + verdicts(summary, quality)) + "\n"


def fronts_plot(summary: list[dict], quality: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (cost, label, scale) in zip(
        axes, [("train_flops", "training TFLOPs", 1e-12), ("gflops_per_sample", "sampling GFLOPs per sample", 1)]
    ):
        for config in dict.fromkeys(e["configuration"] for e in summary):
            pts = sorted(
                (e[cost] * scale, e[quality], e[f"{quality}_noise"]) for e in summary if e["configuration"] == config
            )
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] / 2 for p in pts], fmt="o-", label=config)
        front = [summary[i] for i in pareto_front(summary, cost, quality)]
        ax.plot([e[cost] * scale for e in front], [e[quality] for e in front], "k--", lw=0.8, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{quality} (lower is better; bars: noise)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str]) -> int:
    args, passed = parse_args(argv)
    rows, space = [], None
    for run in args.runs:
        if not run.exists():
            raise UserError(f"compare: {run} does not exist")
        ckpt, cost = pick_checkpoint(run, args.train_flops)
        name, config, train_seed = run_identity(run, ckpt)
        for seed in args.sampling_seeds:
            out = args.out / re.sub(r"[^A-Za-z0-9_.+=-]+", "_", f"{name}-sample{seed}")
            if args.overwrite or not (out / "results.json").is_file():
                code = evaluate.main(
                    [*passed, "--ckpt_path", str(ckpt), "--out", str(out), "--seed", str(seed), "--overwrite"]
                )
                if code:
                    return code
            result = json.loads((out / "results.json").read_text())
            space = result["meta"]["features"]
            for row in result["rows"]:
                rows.append(
                    {
                        "run": name,
                        "configuration": config,
                        "training_seed": train_seed,
                        "sampling_seed": seed,
                        "ckpt": str(ckpt),
                        "train_step": result["meta"].get("global_step"),
                        "train_flops": None if cost is None else cost["flops"],
                        "train_images": None if cost is None else cost["images"],
                        **row,
                    }
                )
    quality = args.quality or f"fid_{space}"
    metrics = [k for k in rows[0] if k.startswith(("fid_", "kid_", "swd_", "spectrum_")) and not k.endswith("_std")]
    if quality not in metrics:
        raise UserError(f"--quality {quality}: the evaluations hold {metrics}")
    if any(r["train_flops"] is None for r in rows):
        missing = sorted({r["run"] for r in rows if r["train_flops"] is None})
        print(f"compare: no training_cost in the checkpoints of {missing}: no training-FLOPs front", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "compare.json", json.dumps({"argv": argv, "rows": rows}, indent=2).encode())
    write_csv(args.out / "compare.csv", rows)
    summary = summarise(rows, metrics)
    write_csv(args.out / "summary.csv", summary)
    atomic_write_bytes(args.out / "summary.md", markdown(summary, quality, [quality]).encode())
    if all(r["train_flops"] is not None for r in rows):
        fronts_plot(summary, quality, args.out / "fronts.png")
    print((args.out / "summary.md").read_text())
    print(f"wrote {args.out}/compare.json, compare.csv, summary.csv, summary.md, fronts.png", file=sys.stderr)
    return 0
