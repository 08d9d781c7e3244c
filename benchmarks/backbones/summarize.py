"""The tables of benchmarks/BACKBONES.md from the raw rows in this folder:
    python benchmarks/backbones/summarize.py
speed_cpu.json (``bench backbones``), <body>-seed<t>-sample<s>/results.json (``quality.sh``), train_times.txt."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = {"small": "UNet (small)", "dit": "DiT (128 wide, 6 blocks, p=2)", "hdit": "hourglass (96/192, p=2)"}


def speed(path: Path) -> None:
    rows = json.loads(path.read_text())
    print(f"`{path.name}`: {rows[0]['device_name']}, {rows[0]['dtype']}, torch {rows[0]['torch']}, {rows[0]['date']}\n")
    print(
        "| size | body | batch | params (M) | training GFLOPs/image | images/s | achieved GFLOP/s "
        "| diffusers DiT images/s | ours / diffusers |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["ratio_vs_diffusers"]
        peer = f"{r['diffusers_images_per_s']:.2f} | {ratio:.2f}x" if ratio else "- | -"
        print(
            f"| {r['size']} | {r['body']} | {r['batch']} | {r['params'] / 1e6:.1f} | "
            f"{r['train_gflops_per_image']:.1f} | "
            f"{r['images_per_s']:.2f} | {r['tflops_achieved'] * 1e3:.0f} | {peer} |"
        )
    print()


def training_gflops_per_image(body: str) -> float:
    """The engine's own count (what quality.sh equalises): forward + backward FLOPs of a batch, per image."""
    import sys

    from pyramid_dm.cli import expand_defaults, make_cli

    sys.argv = ["pyramid_dm"]
    config = f"configs/pixel/fashion_mnist_{body}.yaml"
    cli = make_cli(subcommands=False, run=False, args=expand_defaults(["--config", config]))
    return cli.model.engine.training_flops(32) / 32 / 1e9


def quality() -> None:
    times = {}
    for line in (HERE / "train_times.txt").read_text().splitlines():
        m = re.match(r"(\w+)-seed(\d) steps (\d+) train ([\d.]+) s", line)
        if m:
            times[m[1], int(m[2])] = (int(m[3]), float(m[4]))
    print(
        "| body | training steps (batch 32) | training TFLOPs | train s | sampler steps | GFLOPs/sample | "
        "FID-proxy: training seed 0 (sampling 0, 1) | training seed 1 (sampling 0, 1) | mean | "
        "sampling spread | training spread |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for body in NAMES:
        for steps in (20, 10):
            per_seed, per_sample = {}, None
            for seed in (0, 1):
                for sample in (0, 1):
                    path = HERE / f"{body}-seed{seed}-sample{sample}" / "results.json"
                    if path.exists():
                        row = next(r for r in json.loads(path.read_text())["rows"] if r["steps"] == steps)
                        per_seed.setdefault(seed, []).append(row["fid_fmnist_clf"])
                        per_sample = row["gflops_per_sample"]
            if not per_seed:
                continue
            done = [times[body, s] for s in (0, 1) if (body, s) in times]
            train_steps = done[0][0] if done else 0
            total = train_steps * 32 * training_gflops_per_image(body) / 1e3
            seconds = " / ".join(f"{t:.0f}" for _, t in done)
            cells = [", ".join(f"{f:.2f}" for f in per_seed[s]) if s in per_seed else "pending" for s in (0, 1)]
            values = [f for fs in per_seed.values() for f in fs]
            sampling = max(max(fs) - min(fs) for fs in per_seed.values())
            means = [statistics.mean(fs) for fs in per_seed.values()]
            training = f"{max(means) - min(means):.2f}" if len(means) > 1 else "-"
            print(
                f"| {NAMES[body]} | {train_steps} | {total:.1f} | {seconds} | {steps} | {per_sample:.2f} | "
                f"{cells[0]} | {cells[1]} | {statistics.mean(values):.2f} | {sampling:.2f} | {training} |"
            )


if __name__ == "__main__":
    for path in sorted(HERE.glob("speed_*.json")):
        speed(path)
    if (HERE / "train_times.txt").exists():
        quality()
