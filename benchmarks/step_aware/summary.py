"""Tables and the policy plot of benchmarks/STEP_AWARE.md from the outputs of run.sh (and distill.sh).

python benchmarks/step_aware/summary.py CHOSEN_POLICY.json > benchmarks/step_aware/summary.md
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FID = "fid_fmnist_clf"


def rows(name: str) -> list[dict]:
    path = HERE / "eval" / name / "results.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def seeds(prefix: str, steps: int | None = None) -> list[dict]:
    """The row (at ``steps``) of each sampling seed of evaluation ``prefix``-seed<k>."""
    out = []
    for k in (0, 1):
        match = [r for r in rows(f"{prefix}-seed{k}") if steps is None or r["steps"] == steps]
        out += match[:1]
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.3f} ({' / '.join(f'{v:.3f}' for v in values)})"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def main(chosen: str | None) -> None:
    full = seeds("supernet-full", 20)
    f_full = [r[FID] for r in full]
    spread = max(f_full) - min(f_full) if len(f_full) == 2 else math.nan
    g_full = full[0]["gflops_per_sample"] if full else math.nan
    ms_full = mean([r["seconds_per_sample"] * 1e3 for r in full])
    print("## Supernet at full width vs the plainly trained network (DPM-Solver++(2M), 20 steps, 1000 samples)\n")
    print("| network | FID-proxy mean (seed 0 / 1) | GFLOPs/sample |")
    print("|---|---|---|")
    plain = seeds("plain", 20)
    print(
        f"| plain | {fmt([r[FID] for r in plain])} | {plain[0]['gflops_per_sample']:.3f} |"
        if plain
        else "| plain | - | - |"
    )
    print(f"| supernet, width 1 | {fmt(f_full)} | {g_full:.3f} |")
    print(f"\nseed-to-seed spread of the full width: {spread:.3f}\n")

    print("## The front at DPM-Solver++(2M) 20 steps, re-evaluated (1000 samples, seeds 0 and 1)\n")
    print(
        "| policy | mean width | GFLOPs/sample | FLOPs saved | FID-proxy mean (seed 0 / 1) | vs full | within spread |"
    )
    print("|---|---|---|---|---|---|---|")
    best = None
    for d in sorted((HERE / "eval").glob("dpm20-front-*-seed0")):
        name = d.name.removesuffix("-seed0")
        rs = seeds(name)
        if len(rs) < 2:
            continue
        f = [r[FID] for r in rs]
        saved = 1 - rs[0]["gflops_per_sample"] / g_full
        delta = mean(f) - mean(f_full)
        ok = delta <= spread
        if ok and (best is None or saved > best[1]):
            best = (name, saved)
        print(
            f"| {name} | {rs[0]['mean_width']:.2f} | {rs[0]['gflops_per_sample']:.3f} | {saved:.0%} | {fmt(f)} | "
            f"{delta:+.3f} | {'yes' if ok else 'no'} |"
        )
    print(f"\nlargest saving within the spread: {best}\n")

    print("## The same model with fewer steps (equal-FLOPs peers of a policy)\n")
    print("| steps | GFLOPs/sample | FID-proxy mean (seed 0 / 1) |")
    print("|---|---|---|")
    for n in (20, 12, 10, 8, 6):
        rs = seeds("supernet-full", n)
        if rs:
            print(f"| {n} | {rs[0]['gflops_per_sample']:.3f} | {fmt([r[FID] for r in rs])} |")

    chosen_steps = [seeds("dpm-chosen-steps", n) for n in (12, 10, 8)]
    if all(chosen_steps):
        print("\n## The chosen log-SNR policy at fewer DPM-Solver++ steps (one policy, every budget)\n")
        print("| steps | GFLOPs/sample | FID-proxy, policy | FID-proxy, full width (same steps) |")
        print("|---|---|---|---|")
        for n, rs in zip((12, 10, 8), chosen_steps):
            print(
                f"| {n} | {rs[0]['gflops_per_sample']:.3f} | {fmt([r[FID] for r in rs])} | "
                f"{fmt([r[FID] for r in seeds('supernet-full', n)])} |"
            )
    wall = {
        k: [r["seconds_per_sample"] * 1e3 for rep in (1, 2, 3) for r in rows(f"wall-{k}-{rep}")]
        for k in ("full", "chosen")
    }
    if wall["full"] and wall["chosen"]:
        print("\n## Wall-clock at batch 256 (DPM-Solver++ 20 steps, 512 samples, alternated three times)\n")
        print(
            f"full: {fmt(wall['full'])} ms/sample; chosen: {fmt(wall['chosen'])} ms/sample; "
            f"saving {1 - mean(wall['chosen']) / mean(wall['full']):.0%}"
        )
    ddpm_full, ddpm_pol = seeds("ddpm250-full", 250), seeds("ddpm250-chosen", 250)
    if ddpm_full and ddpm_pol:
        print("\n## The chosen log-SNR policy carried over to DDPM 250 steps (200 samples, seeds 0 and 1)\n")
        print("| | GFLOPs/sample | FID-proxy mean (seed 0 / 1) |")
        print("|---|---|---|")
        for label, rs in (("full width", ddpm_full), ("chosen policy", ddpm_pol)):
            print(f"| {label} | {rs[0]['gflops_per_sample']:.2f} | {fmt([r[FID] for r in rs])} |")
    ddpm_front = sorted((HERE / "eval").glob("ddpm250-front-*-seed0"))
    if ddpm_front and ddpm_full:
        print("\n## The front searched at DDPM 250 steps, re-evaluated (200 samples, seeds 0 and 1)\n")
        print("| policy | mean width | GFLOPs/sample | FLOPs saved | FID-proxy mean (seed 0 / 1) | vs full (250) |")
        print("|---|---|---|---|---|---|")
        g250, f250 = ddpm_full[0]["gflops_per_sample"], mean([r[FID] for r in ddpm_full])
        for d in ddpm_front:
            rs = seeds(d.name.removesuffix("-seed0"), 250)
            if len(rs) == 2:
                f = [r[FID] for r in rs]
                print(
                    f"| {d.name.removesuffix('-seed0')} | {rs[0]['mean_width']:.2f} | "
                    f"{rs[0]['gflops_per_sample']:.2f} | {1 - rs[0]['gflops_per_sample'] / g250:.0%} | "
                    f"{fmt(f)} | {mean(f) - f250:+.3f} |"
                )
        peer = seeds("ddpm250-full", 125)
        if peer:
            print(
                f"| full width, DDPM 125 steps | 1.00 | {peer[0]['gflops_per_sample']:.2f} | "
                f"{1 - peer[0]['gflops_per_sample'] / g250:.0%} | {fmt([r[FID] for r in peer])} | "
                f"{mean([r[FID] for r in peer]) - f250:+.3f} |"
            )
    distill = {d: {w: seeds(f"digits-distill-{d}-w{w}") for w in ("1.0", "0.5", "0.25")} for d in ("false", "true")}
    if all(all(v.values()) for v in distill.values()):
        print("\n## In-place distillation (digits 8x8, 600 steps, DPM-Solver++ 20 steps, 500 samples, seeds 0 and 1)\n")
        print("| supernet | width 1 | width 0.5 | width 0.25 |")
        print("|---|---|---|---|")
        for d, label in (("false", "sandwich only (DDSM)"), ("true", "sandwich + distillation")):
            cells = " | ".join(fmt([r["fid_digits_clf"] for r in distill[d][w]]) for w in ("1.0", "0.5", "0.25"))
            print(f"| {label} | {cells} |")
    pyr = seeds("pyramid-full")
    if pyr:
        print("\n## Pyramid x step-aware x DPM-Solver++ (20/8/8) against pixel at 20 steps\n")
        print("| model | GFLOPs/sample | of pixel@20 | FID-proxy mean (seed 0 / 1) |")
        print("|---|---|---|---|")
        print(f"| pixel supernet, width 1, 20 steps | {g_full:.3f} | 100% | {fmt(f_full)} |")
        print(
            f"| pyramid supernet, width 1 | {pyr[0]['gflops_per_sample']:.3f} | "
            f"{pyr[0]['gflops_per_sample'] / g_full:.0%} | {fmt([r[FID] for r in pyr])} |"
        )
        for d in sorted((HERE / "eval").glob("pyramid-front-*-seed0")):
            rs = seeds(d.name.removesuffix("-seed0"))
            if len(rs) == 2:
                print(
                    f"| pyramid {d.name.removesuffix('-seed0')} (mean width {rs[0]['mean_width']:.2f}) | "
                    f"{rs[0]['gflops_per_sample']:.3f} | {rs[0]['gflops_per_sample'] / g_full:.0%} | "
                    f"{fmt([r[FID] for r in rs])} |"
                )
    search_cost()
    if chosen:
        plot_policy(Path(chosen))
    print(f"\nfull width ms/sample at batch 250 (seeds 0/1): {ms_full:.2f}")


def search_cost() -> None:
    print("\n## Search cost\n")
    print("| study | trials | samples per trial | network calls per sample | image-forwards |")
    print("|---|---|---|---|---|")
    for study in sorted(HERE.glob("study-*")):
        meta = json.loads((study / "study.json").read_text())
        trials = list(csv.DictReader(open(study / "trials.csv")))
        nfe = float(trials[0]["nfe"]) if trials else 0
        print(
            f"| {study.name} | {len(trials)} | {meta['num_samples']} | {nfe:g} | "
            f"{len(trials) * meta['num_samples'] * nfe:.2e} |"
        )
    print("| DDSM (CIFAR-10, algorithms.md 3.3) | ~500 | 4096 | 1000 | 2.0e+09 |")


def calls_log_snr() -> dict[str, list[float]]:
    """The log-SNR of every call of DPM-Solver++ 20 steps and DDPM 250 steps on the supernet's schedule."""
    from pyramid_dm.diffusion import sampling_sigmas
    from pyramid_dm.engine import load_engine
    from pyramid_dm.engine.step_policy import log_snr

    engine = load_engine(str(HERE.parents[1] / "runs" / "bench-step-aware" / "supernet" / "checkpoints" / "last.ckpt"))
    out = {}
    for sampler, steps in (("dpmpp_2m", 20), ("ddpm", 250)):
        sigmas = sampling_sigmas(engine.schedules[0], steps, engine.plan.grid(sampler)).tolist()[:steps]
        out[f"{sampler} {steps}"] = [log_snr(s) for s in sigmas]
    return out


def plot_policy(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy = json.loads(path.read_text())
    level = policy["levels"][0]
    grids = calls_log_snr()
    lo = min([-20.0, level["breakpoints"][0] - 2, *(min(v) for v in grids.values())])
    hi = max([12.0, level["breakpoints"][-1] + 2, *(max(v) for v in grids.values())])
    xs = [lo, *level["breakpoints"], hi]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for k, w in enumerate(level["widths"]):
        ax.hlines(w, xs[k], xs[k + 1], lw=3)
    for i, (name, lams) in enumerate(grids.items()):  # where each sampler's calls fall
        ax.plot(lams, [0.05 + 0.07 * i] * len(lams), "|", ms=8, label=f"{name} calls")
    ax.legend(fontsize=7, loc="center right")
    ax.set_xlabel("log-SNR  (left: noisy, right: clean)")
    ax.set_ylabel("width multiplier")
    ax.set_ylim(0, 1.1)
    ax.set_title(f"{policy.get('name', path.name)}: width vs log-SNR of the call", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "policy.png", dpi=120)
    print(f"\npolicy plot: step_aware/policy.png; breakpoints {level['breakpoints']}, widths {level['widths']}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
