"""The survey comparison of benchmarks/GUIDANCE.md, in one process (the real features are computed once):

1. classifier guidance (a noise-conditional classifier, ``--classifier``) against classifier-free guidance on the same
   class-conditional model, over a sweep of scales, at one sampler and budget;
2. the score-based samplers (annealed Langevin dynamics, predictor-corrector, Euler-Maruyama) against the existing
   samplers at equal NFE.

    python benchmarks/guidance/compare.py --ckpt_path runs/pixel-fashion_mnist_16/checkpoints/last.ckpt \
        --classifier runs/clf-fashion_mnist_16/checkpoints/last.ckpt --out benchmarks/guidance/fashion_mnist_16

Every row is one (method, scale or sampler, seed); FID-proxy, KID, precision and recall in the data set's classifier
feature space against the train split; cost as ``evaluate`` measures it (NFE, classifier gradients, GFLOPs per sample
by ``torch.utils.flop_counter``, wall-clock per sample). Writes ``results.json`` / ``results.csv`` and two plots.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyramid_dm.checkpoints import read_checkpoint  # noqa: E402
from pyramid_dm.commands.evaluate import resolve_data  # noqa: E402
from pyramid_dm.engine import ClassifierGuide, engine_from_checkpoint  # noqa: E402
from pyramid_dm.engine.wrappers import Guidance  # noqa: E402
from pyramid_dm.eval.evaluate import evaluate_grid  # noqa: E402
from pyramid_dm.eval.features import build_features  # noqa: E402
from pyramid_dm.eval.real_features import real_features  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sampler", default="dpmpp_2m", help="the sampler of the guidance sweep")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg_scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    p.add_argument("--cg_scales", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--nfe", type=int, nargs="+", default=[20, 50])
    p.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpmpp_2m", "heun", "euler_maruyama", "pc", "ald"])
    p.add_argument("--parts", nargs="+", default=["guidance", "samplers"])
    args = p.parse_args()
    torch.set_grad_enabled(False)

    ckpt = read_checkpoint(args.ckpt_path, "--ckpt_path")
    model = engine_from_checkpoint(ckpt, args.ckpt_path).eval()
    manifest, image_size = resolve_data(None, ckpt, args.ckpt_path)
    guide = ClassifierGuide(args.classifier, 1.0)
    guide.check(model, manifest.name)
    extractor = build_features("auto", manifest.name)
    real = real_features(manifest, "train", extractor, image_size, None, True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []

    def run(method: str, seed: int, sampler: str, steps, **options) -> None:
        start = time.perf_counter()
        nfe = options.pop("nfe_budgets", False)
        (row,) = evaluate_grid(
            model, extractor, real, [sampler], [steps], args.num_samples, args.batch_size, seed,
            progress=False, nfe_budgets=nfe, **options,
        )  # fmt: skip
        row.update(method=method, seed=seed)
        rows.append(row)
        fid = row[f"fid_{extractor.name}"]
        print(
            f"{method:>24} seed {seed}: NFE {row['nfe']:>4} +{row['classifier_calls']:>3} clf  fid {fid:7.3f}  "
            f"P {row[f'precision_{extractor.name}']:.3f} R {row[f'recall_{extractor.name}']:.3f}  "
            f"{row['gflops_per_sample']:6.2f} GF  {row['seconds_per_sample'] * 1e3:6.1f} ms  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        (args.out / "results.json").write_text(json.dumps({"rows": rows}, indent=1, default=str) + "\n")

    for seed in args.seeds:
        if "guidance" in args.parts:
            for s in args.cfg_scales:
                run(f"cfg {s:g}", seed, args.sampler, args.steps, wrappers=[Guidance(s)])
            for s in args.cg_scales:
                guide.scale = s
                run(f"classifier {s:g}", seed, args.sampler, args.steps, wrappers=[guide])
        if "samplers" in args.parts:
            for budget in args.nfe:
                for sampler in args.samplers:
                    run(f"{sampler} nfe{budget}", seed, sampler, budget, nfe_budgets=True)

    columns = list(dict.fromkeys(k for row in rows for k in row if not isinstance(row[k], (list, dict))))
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, extractor.name, args.out)


def plot(rows: list[dict], space: str, out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for family, marker in (("cfg", "o"), ("classifier", "s")):
        pts = [r for r in rows if r["method"].startswith(family + " ")]
        if not pts:
            continue
        for seed in sorted({r["seed"] for r in pts}):
            mine = sorted((r for r in pts if r["seed"] == seed), key=lambda r: float(r["method"].split()[1]))
            label = f"{family} (seed {seed})"
            axes[0].plot([r[f"recall_{space}"] for r in mine], [r[f"precision_{space}"] for r in mine], marker=marker,
                         label=label)  # fmt: skip
            axes[1].plot([r["gflops_per_sample"] for r in mine], [r[f"fid_{space}"] for r in mine], marker=marker,
                         label=label)  # fmt: skip
            for r in mine:
                axes[0].annotate(r["method"].split()[1], (r[f"recall_{space}"], r[f"precision_{space}"]), fontsize=7)
    axes[0].set(xlabel="recall (diversity)", ylabel="precision (fidelity)", title="guidance scale sweep")
    axes[1].set(xlabel="GFLOPs per sample", ylabel=f"FID-proxy ({space})", title="guidance: quality vs cost")
    samplers = [r for r in rows if " nfe" in r["method"]]
    for name in dict.fromkeys(r["sampler"] for r in samplers):
        mine = sorted((r for r in samplers if r["sampler"] == name), key=lambda r: (r["seed"], r["nfe"]))
        for seed in sorted({r["seed"] for r in mine}):
            pts = [r for r in mine if r["seed"] == seed]
            axes[2].plot([r["nfe"] for r in pts], [r[f"fid_{space}"] for r in pts], marker="o",
                         label=f"{name}" if seed == min(r["seed"] for r in mine) else None)  # fmt: skip
    axes[2].set(xlabel="NFE", ylabel=f"FID-proxy ({space})", title="samplers at equal NFE", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "guidance.png", dpi=110)


if __name__ == "__main__":
    main()
