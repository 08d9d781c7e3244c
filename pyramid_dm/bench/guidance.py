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

from ..diffusion import DiffusionLoss, NativeLayout, build_schedule
from ..engine import DiffusionEngine, SamplingPlan
from ..engine.wrappers import Guidance
from ..stages import IdentityStage
from .layout import add_layout_args, unet_from_args


def add_parser(sub) -> None:
    g = sub.add_parser("guidance", help="classifier-free guidance: one batch of 2B vs two batches of B")
    add_layout_args(g, image_size=8, channels=1, batch=64, attn=[4])
    g.add_argument("--classes", type=int, default=10)
    g.add_argument("--sampler", default="dpmpp_2m")
    g.add_argument("--sample-steps", type=int, default=20)
    g.add_argument("--scale", type=float, default=3.0)
    g.add_argument("--rounds", type=int, default=5)
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")


def engine_for(args, device) -> DiffusionEngine:
    """A class-conditional pixel engine of the benchmark's own settings, built from its parts (no Lightning needed,
    so the benchmark runs wherever torch does); its zero-initialised output layers get weights, so that the
    guidance branches differ."""
    net = lambda: unet_from_args(args, num_classes=args.classes)  # noqa: E731
    schedule = build_schedule("cosine", 1000)
    plan = SamplingPlan.build(1, args.sampler, args.sample_steps, None)
    engine = DiffusionEngine(
        IdentityStage(args.channels, args.image_size),
        NativeLayout(),
        net,
        [schedule],
        DiffusionLoss.build("schedule", "uniform"),
        plan,
        prediction="eps",
        sigma_data=0.5,
        num_classes=args.classes,
        label_dropout=0.1,
        latent_scale=1.0,
        level_training="all",
        family="pixel",
    )
    with torch.no_grad():
        for p in engine.net.parameters():
            if not p.abs().max():
                p.normal_(0, 0.02)
    return engine.to(device).eval()


def bench_guidance(args) -> float:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    engine = engine_for(args, device)
    labels = torch.arange(args.batch) % args.classes
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"device {device} | {args.dtype} | batch {args.batch} | {args.channels}x{args.image_size}x{args.image_size} | "
        f"widths {[args.base * m for m in args.mult]} | {args.sampler} {args.sample_steps} steps | guidance "
        f"{args.scale} | {torch.get_num_threads()} threads"
    )

    def run(batched: bool):
        g = torch.Generator(device=device).manual_seed(0)
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = engine.sample(
                args.batch, args.sampler, args.sample_steps, labels=labels, generator=g,
                wrappers=[Guidance(args.scale, batched=batched)],
            )  # fmt: skip
        sync()
        return time.perf_counter() - start, out.float().cpu()

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
