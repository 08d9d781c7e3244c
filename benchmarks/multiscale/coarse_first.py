"""Training-free coarse-first sampling of the single-scale runs of cpu.sh, against the same model sampled at full
resolution with fewer steps, at matched sampling FLOPs: two training seeds x two sampling seeds.

    python benchmarks/multiscale/coarse_first.py RUN [RUN ...] --out benchmarks/multiscale/cpu-3e13/coarse_first.json

Each RUN is a run directory of a single-scale pixel model (its last.ckpt, EMA weights). Rows: full resolution with
DPM-Solver++(2M) at 4, 6 and 8 steps; coarse first (pyramid_dm/engine/coarse_first.py) with C coarse steps at half
the side, then the last S - K steps of the S-step full-resolution grid. Quality against as many training crops as
samples: SWD per Laplacian level, spectrum error per band, FID-proxy in random features (the same as compare's).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import torch

from pyramid_dm.data.builtin import shard_location
from pyramid_dm.data.manifest import Manifest
from pyramid_dm.engine.coarse_first import coarse_first_sample
from pyramid_dm.engine.load import build_model, load_checkpoint
from pyramid_dm.eval.features import build_features, extract
from pyramid_dm.eval.image_metrics import image_metrics, real_images
from pyramid_dm.eval.quality import fid
from pyramid_dm.eval.real_features import real_features

FULL = [4, 6, 8]
COARSE_FIRST = [(8, 4, 8), (8, 4, 4), (6, 3, 6)]  # (S, K, C)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num_samples", type=int, default=250)
    p.add_argument("--sampling_seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    torch.set_grad_enabled(False)
    rows = []
    for run in args.runs:
        ckpt_path = run / "checkpoints" / "last.ckpt"
        ckpt = load_checkpoint(str(ckpt_path))
        engine = build_model(ckpt, str(ckpt_path), None, torch.device("cpu"), command="coarse-first")
        shards = ckpt["datamodule_hyper_parameters"]["shards"]
        manifest = Manifest.load(shard_location(shards))
        size = engine.level_shapes[0][-1]
        reference = real_images(manifest, "train", size, args.num_samples)
        extractor = build_features("random", manifest.name)
        real = real_features(manifest, "train", extractor, size, None, progress=False)
        seed_match = re.search(r"seed(\d+)$", run.name)
        for seed in args.sampling_seeds:
            labels = engine.sample_labels(0, args.num_samples)
            settings = [("full", s, 0, 0) for s in FULL] + [("coarse_first", s, k, c) for s, k, c in COARSE_FIRST]
            for method, steps, start, coarse in settings:
                g = torch.Generator().manual_seed(seed)
                if method == "full":
                    images = engine.sample(args.num_samples, "dpmpp_2m", steps, labels=labels, generator=g)
                    gflops = steps * engine.flops_per_call()[0] / 1e9
                else:
                    images, cost = coarse_first_sample(
                        engine, args.num_samples, steps, start, coarse, labels=labels, generator=g
                    )
                    gflops = cost.flops_per_sample / 1e9
                images = (images.clamp(-1, 1) * 127.5 + 127.5).round() / 127.5 - 1  # as evaluate quantises
                row = {
                    "run": run.name,
                    "training_seed": int(seed_match[1]) if seed_match else None,
                    "sampling_seed": seed,
                    "method": method,
                    "steps": steps,
                    "start": start,
                    "coarse_steps": coarse,
                    "gflops_per_sample": gflops,
                    "fid_random": fid(real, extract(extractor, images)),
                    **image_metrics(["swd", "spectrum"], reference, images, seed),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    summary: dict = {}
    for r in rows:
        summary.setdefault((r["method"], r["steps"], r["start"], r["coarse_steps"]), []).append(r)
    levels = [k for k in rows[0] if k.startswith("swd_") and k != "swd_mean"]  # finest first
    bands = [k for k in rows[0] if k.startswith("spectrum_") and k != "spectrum_mean"]
    columns = ["gflops_per_sample", "swd_mean", *levels, bands[0], "fid_random"]
    print("| method | S | K | C | " + " | ".join(columns) + " |")
    for key, rs in summary.items():
        cells = [*map(str, key)] + [f"{statistics.mean(r[c] for r in rs):.2f}" for c in columns]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
