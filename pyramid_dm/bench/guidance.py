"""``python -m pyramid_dm bench guidance``: classifier-free guidance with its two branches as one forward of batch 2B
(sgm's ``VanillaCFG``) against two forwards of batch B, on the same class-conditional UNet, sampler, noise and labels.

Both are timed alternately in one process (median of ``--rounds``), and their samples are compared (they differ only
by float rounding). The last line is ``ratio_batched_vs_sequential: X.XX`` (images per second, batched / two calls).
NFE is 2 per guided step either way.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..engine import build_engine
from .layout import add_layout_args


def add_parser(sub) -> None:
    g = sub.add_parser("guidance", help="classifier-free guidance: one batch of 2B vs two batches of B")
    add_layout_args(g, image_size=8, channels=1, batch=64, attn=[4])
    g.add_argument("--classes", type=int, default=10)
    g.add_argument("--sampler", default="dpmpp_2m")
    g.add_argument("--sample-steps", type=int, default=20)
    g.add_argument("--scale", type=float, default=3.0)
    g.add_argument("--rounds", type=int, default=5)
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def engine_for(args):
    from ..models import PixelDiffusion

    unet = {"base_channels": args.base, "channel_mult": args.mult, "num_res_blocks": args.blocks}
    unet["attention_resolutions"] = args.attn
    model = PixelDiffusion(args.image_size, args.channels, num_classes=args.classes, unet=unet)
    engine = build_engine("pixel", model.hparams).eval()
    with torch.no_grad():  # the zero-initialised output layers get weights, so that the branches differ
        for p in engine.net.parameters():
            if not p.abs().max():
                p.normal_(0, 0.02)
    return engine


def bench_guidance(args) -> float:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    engine = engine_for(args)
    labels = torch.arange(args.batch) % args.classes
    print(
        f"batch {args.batch} | {args.channels}x{args.image_size}x{args.image_size} | widths "
        f"{[args.base * m for m in args.mult]} | {args.sampler} {args.sample_steps} steps | guidance {args.scale} | "
        f"{torch.get_num_threads()} threads"
    )

    def run(batched: bool):
        g = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        out = engine.sample(
            args.batch, args.sampler, args.sample_steps, labels=labels, generator=g, guidance=args.scale,
            guidance_batched=batched,
        )  # fmt: skip
        return time.perf_counter() - start, out

    run(True), run(False)  # warm-up
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    outputs = {}
    for _ in range(args.rounds):
        for name in times:
            seconds, outputs[name] = run(name == "batched")
            times[name].append(seconds)
    diff = (outputs["batched"] - outputs["sequential"]).abs().max().item()
    ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
    for name, value in ips.items():
        print(f"{name:10s} {value:10.1f} images/s  (median of {args.rounds} rounds)")
    print(f"max |batched - sequential| = {diff:.2e} (pixels in [-1, 1])")
    ratio = ips["batched"] / ips["sequential"]
    print(f"ratio_batched_vs_sequential: {ratio:.2f}")
    return ratio
