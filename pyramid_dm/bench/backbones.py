"""``python -m pyramid_dm bench backbones``: one training step (forward + backward) of each network body at each image
size, images/s and training FLOPs per image, with diffusers' ``DiTTransformer2DModel`` of the same configuration timed
beside every DiT (alternating rounds in one process).

The bodies are the own-data configs' (``--configs DIR``, default ``configs/own``): ``unet`` is ``pixel_<size>.yaml``'s
UNet, ``dit2`` / ``dit4`` ``pixel_dit_<size>.yaml``'s DiT-S at patch 2 / 4, ``hdit`` ``pixel_hdit_<size>.yaml``'s
hourglass; class-conditional (10 classes), RGB. FLOPs are counted by ``torch.utils.flop_counter`` (attention
included, :mod:`pyramid_dm.flops`); achieved TFLOP/s is FLOPs x images/s, and on a GPU the MFU against the device's
dense peak (Lightning's table). Each ``dit`` row ends with ``ratio_vs_diffusers`` (ours / theirs, images/s); the
last printed line is the smallest of them.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError
from .timing import images_per_s

BODIES = {"unet": ("pixel", None), "dit2": ("pixel_dit", 2), "dit4": ("pixel_dit", 4), "hdit": ("pixel_hdit", None)}
CLASSES = 10


def body_options(configs: Path, body: str, size: int) -> tuple[str, dict]:
    """(network name, its options) of ``body`` at ``size`` from the own-data config."""
    from omegaconf import OmegaConf

    stem, patch = BODIES[body]
    path = configs / f"{stem}_{size}.yaml"
    if not path.is_file():
        raise UserError(f"bench backbones: no config {path} for body {body!r} at {size} px (--configs, --sizes)")
    args = OmegaConf.load(path).model.init_args
    options = OmegaConf.to_container(args.unet)
    if patch is not None:
        options["patch_size"] = patch
    return args.get("network", "unet"), options


def build(network: str, options: dict, size: int) -> torch.nn.Module:
    from ..nets import NETWORKS
    from ..nets.registry import NetSpec

    return NETWORKS.get(network)(NetSpec((3,), (size,), (0,), CLASSES), **options)


def diffusers_dit(options: dict, size: int) -> torch.nn.Module:
    """diffusers' DiT with our DiT's configuration (tests/test_dit.py checks they compute the same function)."""
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as exc:
        raise UserError("bench backbones compares against diffusers: pip install -e '.[bench]'") from exc
    hidden, heads = options.get("hidden_size", 384), options.get("num_heads", 6)
    return DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=3,
        out_channels=3,
        num_layers=options.get("depth", 12),
        sample_size=size,
        patch_size=options["patch_size"],
        num_embeds_ada_norm=CLASSES,
        norm_eps=1e-6,
    )


def training_step(net: torch.nn.Module, x, t, labels, diffusers: bool) -> Callable[[], None]:
    def step():
        if diffusers:
            out = net(x, timestep=t * 1000, class_labels=labels).sample
        else:
            out = net(x, t, labels)
        out.float().square().mean().backward()
        net.zero_grad(set_to_none=True)

    return step


def bench_backbones(args) -> list[dict]:
    from ..flops import training_flops

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    batches = args.batch or [max(1, 256 // size) for size in args.sizes]  # 8, 4, 2 at 32, 64, 128 px
    if len(batches) not in (1, len(args.sizes)):
        raise UserError(f"bench backbones: --batch takes one value or one per size {args.sizes}, got {batches}")
    batches = batches * len(args.sizes) if len(batches) == 1 else batches
    peak = None
    if device.type == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        peak = get_available_flops(device, dtype or torch.float32)
    rows, stamp = [], datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"device {device} | {args.dtype} | torch {torch.__version__} | rounds {args.rounds} x {args.steps} steps")
    for size, batch in zip(args.sizes, batches):
        for body in args.bodies:
            network, options = body_options(Path(args.configs), body, size)
            torch.manual_seed(0)
            nets = {"ours": build(network, options, size)}
            if network == "dit" and not args.no_diffusers:
                nets["diffusers"] = diffusers_dit(options, size)
            x = torch.randn(batch, 3, size, size, device=device)
            t, labels = torch.rand(batch, device=device), torch.randint(0, CLASSES, (batch,), device=device)
            fns = {}
            for name, net in nets.items():
                net.to(device).train()
                fns[name] = training_step(net, x, t, labels, name == "diffusers")
            ips = images_per_s(fns, args, device, dtype, batch)
            flops = training_flops(functools.partial(build, network, options, size), (3, size, size), 1)
            row = {
                "size": size,
                "body": body,
                "network": network,
                "options": options,
                "batch": batch,
                "params": sum(p.numel() for p in nets["ours"].parameters()),
                "train_gflops_per_image": flops / 1e9,
                "images_per_s": ips["ours"],
                "tflops_achieved": ips["ours"] * flops / 1e12,
                "mfu": ips["ours"] * flops / peak if peak else None,
                "diffusers_images_per_s": ips.get("diffusers"),
                "ratio_vs_diffusers": ips["ours"] / ips["diffusers"] if "diffusers" in ips else None,
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "dtype": args.dtype,
                "compiled": args.compile,
                "rounds": args.rounds,
                "steps_per_round": args.steps,
                "torch": torch.__version__,
                "date": stamp,
            }
            rows.append(row)
            peer = ""
            if "diffusers" in ips:
                peer = f" | diffusers {ips['diffusers']:8.2f} img/s, ratio {row['ratio_vs_diffusers']:.2f}x"
            mfu = f" | MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""
            print(
                f"{size:4d} px {body:5s} batch {batch:4d} | {flops / 1e9:8.2f} GFLOP/img | {ips['ours']:8.2f} img/s | "
                f"{row['tflops_achieved']:7.3f} TFLOP/s{mfu}{peer}",
                flush=True,
            )
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    ratios = [r["ratio_vs_diffusers"] for r in rows if r["ratio_vs_diffusers"] is not None]
    if ratios:
        print(f"ratio_vs_diffusers: {min(ratios):.2f}")
    return rows


def add_parser(sub) -> None:
    b = sub.add_parser("backbones", help="training step of UNet, DiT (p=2, 4), hourglass per size, vs diffusers' DiT")
    b.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    b.add_argument("--bodies", nargs="+", choices=list(BODIES), default=list(BODIES))
    b.add_argument("--batch", type=int, nargs="+", default=None, help="one, or one per size (256 // size)")
    b.add_argument("--configs", default="configs/own", help="the own-data configs the bodies are read from")
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    b.add_argument("--compile", action="store_true", help="torch.compile every training step")
    b.add_argument("--no-diffusers", action="store_true", help="skip the diffusers DiT beside each DiT")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--steps", type=int, default=1)
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--json", default=None, help="write the rows here (rewritten after every row)")
