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
        peer = (
            f"{r['diffusers_images_per_s']:.2f} | **{r['ratio_vs_diffusers']:.2f}x**"
            if r["ratio_vs_diffusers"]
            else "| "
        )
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
        "FID-proxy per training seed (mean of 2 sampling seeds) | mean | spread |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for body in NAMES:
        for steps in (20, 10):
            fids, per_sample = [], None
            for seed in (0, 1):
                runs = []
                for sample in (0, 1):
                    path = HERE / f"{body}-seed{seed}-sample{sample}" / "results.json"
                    if not path.exists():
                        continue
                    data = json.loads(path.read_text())
                    row = next(r for r in data["rows"] if r["steps"] == steps)
                    runs.append(row["fid_fmnist_clf"])
                    per_sample = row["gflops_per_sample"]
                if runs:
                    fids.append(statistics.mean(runs))
            if not fids:
                continue
            done = [times[body, s] for s in (0, 1) if (body, s) in times]
            train_steps = done[0][0] if done else 0
            total = train_steps * 32 * training_gflops_per_image(body) / 1e3
            seconds = " / ".join(f"{t:.0f}" for _, t in done)
            spread = max(fids) - min(fids) if len(fids) > 1 else float("nan")
            print(
                f"| {NAMES[body]} | {train_steps} | {total:.1f} | {seconds} | {steps} | {per_sample:.2f} | "
                f"{' / '.join(f'{f:.2f}' for f in fids)} | {statistics.mean(fids):.2f} | {spread:.2f} |"
            )


if __name__ == "__main__":
    for path in sorted(HERE.glob("speed_*.json")):
        speed(path)
    if (HERE / "train_times.txt").exists():
        quality()
