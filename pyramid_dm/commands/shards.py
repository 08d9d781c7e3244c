"""``python -m pyramid_dm shards SOURCE [PATH] --out DIR``: write webdataset shards from a real image source."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import imageio
from ..data.photos import photo_crops
from ..data.shards import write_shards
from ..data.sources import FASHION_MNIST_DIR, idx_dataset, image_folder, sklearn_digits
from .args import Parser

EPILOG = """sources:
  folder PATH         PNG/JPEG tree, one sub-folder per class (or a flat folder: unlabelled); RGB or grayscale
  idx PATH            MNIST-format directory (train-*-ubyte[.gz], t10k-*-ubyte[.gz]); t10k becomes val
  fashion-mnist       idx at /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)
  digits              scikit-learn's 1,797 8x8 digits
  photos              random crops of ten colour photographs shipped in scikit-image and scikit-learn, at --size
                      (default 64) px, --count / --val-count crops, each --scale MIN MAX times --size photo pixels on
                      a side; validation crops come from a strip on each photo's right (--val-fraction of its width,
                      default 0.25) that training crops never touch; labels: the photo
  encode SHARDS       a shard set again, each sample with its latents from --autoencoder CKPT added, so that latent
                      and latent-pyramid training skip the encoder (--hflip: also the mirrored images' latents)

examples:
  python -m pyramid_dm shards folder ~/my_images --out shards/mine --size 64
  python -m pyramid_dm shards fashion-mnist --out shards/fashion_mnist --per-shard 2500
  python -m pyramid_dm shards photos --size 128 --count 20000 --val-count 2000 --out shards/photos_128
  python -m pyramid_dm shards encode shards/mine --autoencoder runs/ae/checkpoints/last.ckpt --out shards/mine_latents
"""


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m pyramid_dm shards",
        description="Write webdataset tar shards and a manifest.json from a real image source.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", choices=["folder", "idx", "fashion-mnist", "digits", "photos", "encode"])
    p.add_argument("path", nargs="?", help="input folder for 'folder' and 'idx'; the shard set for 'encode'")
    p.add_argument("--out", required=True, help="output directory for the shards and manifest.json")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument(
        "--val-fraction", type=float, help="held-out fraction for folder/digits (default 0.1), photos (default 0.25)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic train/val split")
    p.add_argument("--size", type=int, help="centre-crop and resize every image to SIZE x SIZE (photos: crop size)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="force grayscale (1) or RGB (3); default: as stored")
    p.add_argument("--name", help="data set name recorded in the manifest (default: the output folder's name)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing shard set in --out (the new set is staged and swapped in only when complete; only "
        "the old set's own files are removed)",
    )
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: skip, count)")
    p.add_argument("--max-pixels", type=int, help="reject images whose header declares more pixels (default 2^25)")
    p.add_argument("--no-progress", action="store_true")
    c = p.add_argument_group("photos")
    c.add_argument("--count", type=int, default=10000, help="training crops (default 10000)")
    c.add_argument("--val-count", type=int, default=1000, help="validation crops (default 1000)")
    c.add_argument(
        "--scale", type=float, nargs=2, default=(1.0, 2.0), metavar=("MIN", "MAX"), help="crop side / --size (1 2)"
    )
    e = p.add_argument_group("encode")
    e.add_argument("--autoencoder", help="the autoencoder checkpoint (stage one) whose latents to store")
    e.add_argument("--hflip", action="store_true", help="also store the latents of each image mirrored")
    e.add_argument("--batch", type=int, default=256, help="images encoded at once")
    e.add_argument("--device", default="auto", help="where the autoencoder runs (auto: a GPU if there is one)")
    return p


def encode(args) -> int:
    import torch

    from ..data.encode import write_encoded_shards
    from ..data.manifest import Manifest
    from ..errors import UserError
    from ..stages import AutoencoderStage, load_autoencoder_checkpoint

    if not args.autoencoder:
        parser().error("source 'encode' needs --autoencoder CKPT")
    manifest = Manifest.load(args.path)
    ae = load_autoencoder_checkpoint(args.autoencoder, "--autoencoder")
    stage = AutoencoderStage(ae["hparams"], ae["state_dict"])
    want = (manifest.channels, manifest.image_size, manifest.image_size)
    if tuple(stage.image_shape) != want:
        raise UserError(
            f"--autoencoder {args.autoencoder} was trained on {stage.image_shape} (C, H, W) images but {manifest.path} "
            f"holds {want}: encode shards of the images it was trained on"
        )
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    stage.to(device)
    record = {
        "autoencoder": str(args.autoencoder),
        "autoencoder_sha256": stage.fingerprint(),
        "level_shapes": [list(s) for s in stage.level_shapes],
    }
    encode_batch = lambda x: stage.pack(stage.encode(x.to(device))).float().cpu()  # noqa: E731
    out = write_encoded_shards(
        manifest, Path(args.out), encode_batch, record, args.hflip, args.batch, args.overwrite, not args.no_progress
    )
    print(f"wrote {out} (latents {record['level_shapes']} of {args.autoencoder})")
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.source in ("folder", "idx") and not args.path:
        parser().error(f"source {args.source!r} needs a PATH")
    if args.max_pixels:
        imageio.MAX_PIXELS = args.max_pixels
    if args.source == "encode":
        return encode(args)
    size = args.size
    if args.source == "photos":
        fraction = 0.25 if args.val_fraction is None else args.val_fraction
        size = None  # the crops are made at their size
        images = photo_crops(args.size or 64, args.count, args.val_count, args.scale, fraction, args.seed)
    elif args.source == "folder":
        images = image_folder(args.path, 0.1 if args.val_fraction is None else args.val_fraction, args.seed)
    elif args.source == "idx":
        images = idx_dataset(args.path)
    elif args.source == "fashion-mnist":
        images = idx_dataset(FASHION_MNIST_DIR)
    else:
        images = sklearn_digits(0.1 if args.val_fraction is None else args.val_fraction, args.seed)
    try:
        manifest = write_shards(
            images,
            args.out,
            per_shard=args.per_shard,
            size=size,
            channels=args.channels,
            overwrite=args.overwrite,
            name=args.name,
            progress=not args.no_progress,
            strict=args.strict,
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: {args.out} is as it was (a set is swapped in only once complete; unfinished shards are "
            "hidden .partial files, removed by the next run)",
            file=sys.stderr,
        )
        return 130
    for path in images.ignored:
        print(f"ignored {path}", file=sys.stderr)
    written = json.loads(manifest.read_text())
    for line in split_warnings(written):
        print(f"warning: {line}", file=sys.stderr)
    skipped = written["skipped"]
    for entry in skipped["images"]:
        print(f"skipped {entry['image']}: {entry['reason']}", file=sys.stderr)
    if images.ignored or skipped["count"]:
        print(
            f"{skipped['count']} unreadable image(s) skipped, {len(images.ignored)} path(s) ignored by the folder rule "
            "(class = a direct sub-folder; images directly inside it)",
            file=sys.stderr,
        )
    print(f"wrote {manifest}")
    return 0


SMALL_SPLIT = 100  # below this many validation images, val/loss and the FID-proxy on them are mostly noise


def split_warnings(manifest: dict) -> list[str]:
    """What a user should know about the sizes of the splits just written (a small folder gives a tiny one)."""
    train, val = (manifest["splits"][s]["count"] for s in ("train", "val"))
    classes = len(manifest.get("classes") or [])
    out = []
    if val == 0:
        out.append("the val split is empty: fit and validate will refuse these shards (use --val-fraction > 0)")
    elif val < SMALL_SPLIT:
        per_class = f" for {classes} classes" if classes else ""
        out.append(
            f"the val split holds {val} image(s){per_class} (train: {train}); val/loss, the best checkpoint and the "
            f"FID-proxy measured on so few are noisy (more images, or a larger --val-fraction)"
        )
    return out
