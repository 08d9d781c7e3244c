"""``python -m pyramid_dm train-classifier``: train the small classifier whose features give the offline FID-proxy.

    python -m pyramid_dm train-classifier --shards builtin:fashion_mnist --name fmnist_clf \
        --out pyramid_dm/eval/weights/fmnist_clf.pt

Trains on the shard set's ``train`` split with its labels, reports accuracy on the ``val`` split, and writes the
weights together with that accuracy and the exact command into one file (read by :mod:`pyramid_dm.eval.features`).
"""

from __future__ import annotations

import io
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.builtin import shard_location
from ..data.datamodule import read_split
from ..data.manifest import Manifest, atomic_write_bytes
from ..errors import UserError
from ..nets.classifier import SmallClassifier
from .args import Parser

FORMAT = "pyramid_dm.classifier/1"


def load_split(manifest: Manifest, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(read_split(manifest, split))
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if (labels < 0).any():
        raise UserError(f"{manifest.path}: the {split} split has unlabelled samples; a classifier needs labels")
    return images, labels


def train_classifier(
    shards: str,
    name: str,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    seed: int = 0,
    log=print,
) -> tuple[SmallClassifier, dict]:
    """Train a :class:`SmallClassifier` on a shard set; returns it and the metadata stored with its weights."""
    location = shard_location(shards)
    manifest = Manifest.load(location)
    if not manifest.num_classes:
        raise UserError(f"{manifest.path} records no classes; a feature classifier needs labelled data")
    x_train, y_train = load_split(manifest, "train")
    x_val, y_val = load_split(manifest, "val")
    torch.manual_seed(seed)
    net = SmallClassifier(manifest.channels, manifest.num_classes, manifest.image_size, width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=g)
        for i in range(len(x_train) // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = x_train[idx]
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()  # small random translations
            x = torch.roll(x, shifts=shift, dims=(-2, -1))
            loss = F.cross_entropy(net(x), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = net.accuracy(x_val, y_val)
        seconds = time.perf_counter() - start
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, val accuracy {acc:.4f} ({seconds:.0f} s)", flush=True)
    net.eval()
    meta = {
        "format": FORMAT,
        "name": name,
        "dataset": manifest.name,
        "config": {
            "in_channels": manifest.channels,
            "num_classes": manifest.num_classes,
            "input_size": manifest.image_size,
            "width": width,
        },
        "val_accuracy": round(acc, 4),
        "num_train": len(x_train),
        "num_val": len(x_val),
        "epochs": epochs,
        "seed": seed,
    }
    return net, meta


def save_classifier(net: SmallClassifier, meta: dict, path: Path) -> None:
    buf = io.BytesIO()
    torch.save({**meta, "state_dict": net.state_dict()}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str]) -> int:
    p = Parser(
        prog="python -m pyramid_dm train-classifier",
        description=__doc__.split("\n")[0],
    )
    p.add_argument("--shards", required=True, help="shard directory, manifest.json or builtin:NAME (labelled)")
    p.add_argument("--name", required=True, help="feature-space name used in metric names, e.g. fmnist_clf")
    p.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing weights file")
    args = p.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; pass --overwrite to replace it")
    net, meta = train_classifier(args.shards, args.name, args.epochs, args.batch_size, args.lr, args.width, args.seed)
    meta["command"] = "python -m pyramid_dm train-classifier " + shlex.join(argv)
    save_classifier(net, meta, args.out)
    print(f"wrote {args.out}: val accuracy {meta['val_accuracy']:.4f} on {meta['num_val']} images", file=sys.stderr)
    return 0
