"""The UNet layout options shared by the benchmarks, and the network they describe."""

from __future__ import annotations

import argparse

from ..nets import UNet


def add_layout_args(p: argparse.ArgumentParser, image_size: int, channels: int, batch: int, attn: list[int]) -> None:
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--channels", type=int, default=channels)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--base", type=int, default=64 if image_size >= 32 else 32)
    p.add_argument("--mult", type=int, nargs="+", default=[1, 2, 2, 2] if image_size >= 32 else [1, 2, 2])
    p.add_argument("--blocks", type=int, default=2 if image_size >= 32 else 1)
    p.add_argument("--attn", type=int, nargs="*", default=attn)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")


def unet_from_args(args, num_classes: int | None = None) -> UNet:
    return UNet(
        args.channels,
        num_classes=num_classes,
        image_size=args.image_size,
        base_channels=args.base,
        channel_mult=args.mult,
        num_res_blocks=args.blocks,
        attention_resolutions=args.attn,
        dropout=getattr(args, "dropout", 0.0),
    )
