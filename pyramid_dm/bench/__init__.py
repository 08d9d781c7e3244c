"""``python -m pyramid_dm bench {unet,backbones,train,ddp,fid-floor,guidance,steps}``; the others are described in their
modules.

``bench unet``: one UNet training step (forward + backward) against diffusers' UNet2DModel.

Both networks are built with the same widths, blocks per level, attention resolutions, batch and image size, and timed
alternately in the same process; the last line is ``ratio_vs_diffusers: X.XX`` (ours / theirs, images per second).
``--switches`` also times a copy of each compiled in place (``nn.Module.compile``, what ``model.speed.compile`` does;
``--channels-last``: NHWC too) and prints ours-with-switches against diffusers eager and against diffusers compiled.
On a GPU it also reports model-FLOP utilisation (training FLOPs counted by ``torch.utils.flop_counter``).
"""

from __future__ import annotations

import argparse

import torch

from ..errors import UserError
from .layout import add_layout_args, unet_from_args
from .timing import images_per_s


def build_pair(args) -> tuple[torch.nn.Module, torch.nn.Module]:
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:
        raise UserError("bench unet compares against diffusers: pip install -e '.[bench]'") from exc
    widths = [args.base * m for m in args.mult]
    attn = [args.image_size >> i in args.attn for i in range(len(widths))]
    ours = unet_from_args(args)
    theirs = UNet2DModel(
        sample_size=args.image_size,
        in_channels=args.channels,
        out_channels=args.channels,
        block_out_channels=widths,
        layers_per_block=args.blocks,
        dropout=args.dropout,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        attention_head_dim=None,  # one head per attention layer, as DDPM and ours
        norm_num_groups=32,
    )
    return ours, theirs


def step_fn(net, x, t, is_diffusers: bool):
    def step():
        out = net(x, t * 999 if is_diffusers else t)
        out = out.sample if is_diffusers else out
        out.float().square().mean().backward()
        net.zero_grad(set_to_none=True)

    return step


def bench_unet(args) -> float:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    ours, theirs = (m.to(device).train() for m in build_pair(args))
    if device.type == "cuda":
        ours, theirs = (m.to(memory_format=torch.channels_last) for m in (ours, theirs))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(
        f"device {device} | batch {args.batch} | {args.channels}x{args.image_size}x{args.image_size} | "
        f"widths {[args.base * m for m in args.mult]} | blocks {args.blocks} | attention at {args.attn} | {args.dtype}"
    )
    print(f"params: ours {count(ours) / 1e6:.3f}M, diffusers {count(theirs) / 1e6:.3f}M")
    x = torch.randn(args.batch, args.channels, args.image_size, args.image_size, device=device)
    t = torch.rand(args.batch, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    fns = {"ours": step_fn(ours, x, t, False), "diffusers": step_fn(theirs, x, t, True)}
    if args.switches:  # model.speed's compile (+ channels_last), given to both networks: copies, timed beside
        import copy

        for name, net in (("ours", ours), ("diffusers", theirs)):
            fast = copy.deepcopy(net)
            if args.channels_last:
                fast.to(memory_format=torch.channels_last)
            fast.compile()
            xs = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
            fns[f"{name}+switches"] = step_fn(fast, xs, t, name == "diffusers")
    ips = images_per_s(fns, args, device, dtype, args.batch)
    for name, value in ips.items():
        print(f"{name:10s} {value:10.1f} images/s  (median of {args.rounds} rounds x {args.steps} steps)")
    if device.type == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        from ..flops import training_flops

        flops = training_flops(lambda: build_pair(args)[0], (args.channels, args.image_size, args.image_size), 1)
        peak = get_available_flops(device, dtype or torch.float32)
        print(f"training GFLOPs/image {flops / 1e9:.2f} | peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
        if peak:
            print(f"MFU ours {ips['ours'] * flops / peak:.1%} | diffusers {ips['diffusers'] * flops / peak:.1%}")
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if args.switches:
        print(f"ratio_switched_vs_diffusers_switched: {ips['ours+switches'] / ips['diffusers+switches']:.2f}")
        print(f"ratio_switched_vs_diffusers: {ips['ours+switches'] / ips['diffusers']:.2f}")
    ratio = ips["ours"] / ips["diffusers"]
    print(f"ratio_vs_diffusers: {ratio:.2f}")
    return ratio


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pyramid_dm bench", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    u = sub.add_parser("unet", help="UNet training step vs diffusers' UNet2DModel")
    add_layout_args(u, image_size=32, channels=3, batch=16, attn=[16])
    u.add_argument("--dropout", type=float, default=0.0)
    u.add_argument("--device", default="auto")
    u.add_argument("--compile", action="store_true", help="torch.compile both training steps")
    u.add_argument(
        "--switches",
        action="store_true",
        help="also time both networks compiled in place (model.speed.compile), beside the eager ones",
    )
    u.add_argument("--channels-last", action="store_true", help="with --switches: NHWC weights and input too")
    u.add_argument("--warmup", type=int, default=2)
    u.add_argument("--steps", type=int, default=3)
    u.add_argument("--rounds", type=int, default=5)
    f = sub.add_parser("fid-floor", help="FID-proxy of real val images against the real train statistics")
    f.add_argument("--shards", default="builtin:digits")
    f.add_argument("--resize", type=int, default=None)
    f.add_argument("--num", type=int, nargs="+", default=[1000], help="val images compared (one row per value)")
    f.add_argument("--features", default="auto")
    from .backbones import add_parser as add_backbones_parser
    from .ddp import add_parser as add_ddp_parser
    from .guidance import add_parser as add_guidance_parser
    from .steps import add_parser as add_steps_parser
    from .train import add_parser as add_train_parser

    add_backbones_parser(sub)
    add_ddp_parser(sub)
    add_guidance_parser(sub)
    add_steps_parser(sub)
    add_train_parser(sub)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.what == "unet":
        bench_unet(args)
    elif args.what == "fid-floor":
        from .fid_floor import fid_floor

        fid_floor(args.shards, args.resize, args.num, args.features)
    elif args.what == "guidance":
        from .guidance import bench_guidance

        bench_guidance(args)
    elif args.what == "steps":
        from .steps import bench_steps

        bench_steps(args)
    elif args.what == "backbones":
        from .backbones import bench_backbones

        bench_backbones(args)
    elif args.what == "train":
        from .train import bench_train

        bench_train(args)
    elif args.what == "ddp":
        from .ddp import bench_ddp

        bench_ddp(args)
    return 0
