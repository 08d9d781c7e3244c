"""Write an :class:`~pyramid_dm.data.sources.ImageSet` as webdataset tar shards plus a manifest.

Each sample is ``{key}.png`` (lossless, 1 or 3 channels) and, when labelled, ``{key}.cls``. Shards hold ``per_shard``
samples and are written to a hidden ``.partial`` file that is renamed only when complete; ``manifest.json`` is written
last, so a shard set without a manifest is known to be incomplete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from .manifest import FORMAT, MANIFEST, ShardError, atomic_write_bytes
from .sources import Example, ImageSet, SourceError


def _prepare(image: np.ndarray, channels: int, size: int | None) -> Image.Image:
    img = Image.fromarray(image)
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size, size):
        w, h = img.size
        side = min(w, h)  # centre crop to a square, then resize
        img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # mtime 0: identical input gives identical bytes
    tar.addfile(info, io.BytesIO(payload))


def _write_shard(path: Path, samples: list[tuple[str, bytes, int | None]]) -> dict:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, png, label in samples:
            _add(tar, f"{key}.png", png)
            if label is not None:
                _add(tar, f"{key}.cls", str(label).encode())
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return {"file": path.name, "count": len(samples), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _first_pass(images: ImageSet, size: int | None) -> tuple[int, int]:
    """Decide (image_size, channels) and check that images agree when no resize is asked for."""
    first = next(ex for split in images.splits.values() for ex in split)
    arr = first.load()
    channels = 3 if arr.ndim == 3 else 1
    if size is not None:
        return size, channels
    if arr.shape[0] != arr.shape[1]:
        raise SourceError(f"{first.origin or first.key} is {arr.shape[1]}x{arr.shape[0]}, not square: pass --size")
    return arr.shape[0], channels


def write_shards(
    images: ImageSet,
    out_dir: str | Path,
    per_shard: int = 1000,
    size: int | None = None,
    channels: int | None = None,
    overwrite: bool = False,
    name: str | None = None,
    progress: bool = True,
) -> Path:
    """Write ``images`` under ``out_dir``; returns the manifest path. Refuses a non-empty shard directory unless
    ``overwrite``. ``size`` centre-crops and resizes every image to size x size; ``channels`` forces 1 or 3."""
    out = Path(out_dir)
    if per_shard < 1:
        raise ShardError(f"per_shard must be >= 1, got {per_shard}")
    existing = sorted(out.glob("*.tar")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    if existing and not overwrite:
        raise ShardError(f"{out} already holds shards ({existing[0].name}, ...); pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is marked incomplete until we finish
    image_size, auto_channels = _first_pass(images, size)
    channels = channels or auto_channels
    if channels not in (1, 3):
        raise ShardError(f"channels must be 1 or 3, got {channels}")

    splits, total = {}, sum(len(v) for v in images.splits.values())
    written: set[str] = set()
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"writing shards to {out}", total=total)
        for split, examples in images.splits.items():
            shards = []
            for start in range(0, len(examples), per_shard):
                batch = []
                for ex in examples[start : start + per_shard]:
                    batch.append((ex.key, _png(_encode(ex, channels, size, image_size)), ex.label))
                    bar.advance(task)
                path = out / f"{split}-{start // per_shard:06d}.tar"
                shards.append(_write_shard(path, batch))
                written.add(path.name)
            splits[split] = {"count": len(examples), "shards": shards}
    for stale in out.glob("*.tar"):
        if stale.name not in written:
            stale.unlink()
    manifest = {
        "format": FORMAT,
        "name": name or out.name,
        "source": images.source,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "image_size": image_size,
        "channels": channels,
        "classes": images.classes,
        "per_shard": per_shard,
        "splits": splits,
    }
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return out / MANIFEST


def _encode(ex: Example, channels: int, size: int | None, image_size: int) -> Image.Image:
    img = _prepare(ex.load(), channels, size)
    if img.size != (image_size, image_size):
        raise SourceError(
            f"{ex.origin or ex.key} is {img.size[0]}x{img.size[1]} but earlier images are {image_size}x{image_size}: "
            "pass --size to resize every image"
        )
    return img
