"""Write an :class:`~pyramid_dm.data.sources.ImageSet` as webdataset tar shards plus a manifest.

Each sample is ``{key}.png`` (lossless, 1 or 3 channels) and, when labelled, ``{key}.cls``. Shards hold ``per_shard``
samples and are written to a hidden ``.partial`` file that is renamed only when complete; ``manifest.json`` is written
last, so a shard set without a manifest is known to be incomplete.

Replacing a set (``overwrite``) never risks the old one while the new one is written: the new set is staged in the
hidden folder ``STAGING`` inside the output directory, and swapped in only once complete (a few renames). Only the
set's own files are removed: the shards the old manifest lists (or, without one, files named like our shards) and
leftover ``.partial`` files; anything else in the directory is left alone. An image that cannot be read is skipped
and counted (listed in the manifest's ``skipped``) unless ``strict``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from .imageio import ImageError
from .manifest import FORMAT, MANIFEST, ShardError, atomic_write_bytes
from .sources import Example, ImageSet, SourceError

STAGING = ".pyramid_dm-staging"
SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar$")


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


def write_tar(path: Path, samples: list[list[tuple[str, bytes]]]) -> dict:
    """One shard of ``samples`` (each its members: (name, bytes)), written atomically; its manifest entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, payload in members:
                _add(tar, name, payload)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return {"file": path.name, "count": len(samples), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_shard(path: Path, samples: list[tuple[str, bytes, int | None]]) -> dict:
    members = [
        [(f"{key}.png", png)] + ([(f"{key}.cls", str(label).encode())] if label is not None else [])
        for key, png, label in samples
    ]
    return write_tar(path, members)


def _first_pass(images: ImageSet, size: int | None, strict: bool) -> tuple[int, int]:
    """Decide (image_size, channels) from the first readable image, and check that it is square when no resize is
    asked for."""
    for ex in (ex for split in images.splits.values() for ex in split):
        try:
            arr = ex.load()
        except ImageError:
            if strict:
                raise
            continue
        channels = 3 if arr.ndim == 3 else 1
        if size is not None:
            return size, channels
        if arr.shape[0] != arr.shape[1]:
            raise SourceError(f"{ex.origin or ex.key} is {arr.shape[1]}x{arr.shape[0]}, not square: pass --size")
        return arr.shape[0], channels
    raise SourceError(f"{images.source}: not one image could be read")


def _own_files(out: Path) -> list[Path]:
    """The files of the shard set in ``out``: those its manifest lists (a file merely named like a shard is the
    user's), else, without a readable manifest (an unfinished set), those named like our shards; and ``.partial``
    leftovers."""
    try:
        listed = {
            e["file"] for split in json.loads((out / MANIFEST).read_text())["splits"].values() for e in split["shards"]
        }
        ours = lambda name: name in listed  # noqa: E731
    except (OSError, ValueError, KeyError, TypeError):
        ours = lambda name: bool(SHARD_NAME.match(name))  # noqa: E731
    return [p for p in out.iterdir() if p.is_file() and (ours(p.name) or p.name.endswith(".partial"))]


def _swap_in(staged: Path, out: Path) -> None:
    """Replace the set in ``out`` by the complete one in ``staged``: the old manifest goes first (the directory reads
    as incomplete for the few renames that follow, never as a mixed set), then the old set's own files, then the new
    shards and last the new manifest."""
    old = _own_files(out)
    new = {p.name for p in staged.iterdir()}
    theirs = sorted(p.name for p in out.iterdir() if p.name in new and p not in old and p.name != MANIFEST)
    if theirs:
        shutil.rmtree(staged, ignore_errors=True)
        raise ShardError(
            f"{out}: {theirs} would be replaced by the new set's shards of that name, but the old set did not write "
            "them (its manifest does not list them); move them away and run again (nothing was changed)"
        )
    (out / MANIFEST).unlink(missing_ok=True)
    for path in old:
        if path.name not in new:
            path.unlink(missing_ok=True)
    for path in sorted(staged.glob("*.tar")):
        os.replace(path, out / path.name)
    os.replace(staged / MANIFEST, out / MANIFEST)
    shutil.rmtree(staged, ignore_errors=True)


def output_folder(out: Path, overwrite: bool) -> Path:
    """Where a new set for ``out`` is written: ``out`` itself when it holds no set, else (``overwrite``) the staging
    folder inside it, swapped in by :func:`_swap_in` once complete; without ``overwrite`` a set there is an error."""
    if out.is_dir():
        shutil.rmtree(out / STAGING, ignore_errors=True)  # an earlier replacement that never finished
    existing = sorted(out.glob("*.tar")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    if existing and not overwrite:
        raise ShardError(f"{out} already holds shards ({existing[0].name}, ...); pass --overwrite to replace them")
    target = out / STAGING if existing else out
    target.mkdir(parents=True, exist_ok=True)
    return target


def write_shards(
    images: ImageSet,
    out_dir: str | Path,
    per_shard: int = 1000,
    size: int | None = None,
    channels: int | None = None,
    overwrite: bool = False,
    name: str | None = None,
    progress: bool = True,
    strict: bool = False,
) -> Path:
    """Write ``images`` under ``out_dir``; returns the manifest path. Refuses a non-empty shard directory unless
    ``overwrite`` (then the new set is staged and swapped in when complete). ``size`` centre-crops and resizes every
    image to size x size; ``channels`` forces 1 or 3. An unreadable image is skipped and counted unless ``strict``."""
    out = Path(out_dir)
    if per_shard < 1:
        raise ShardError(f"per_shard must be >= 1, got {per_shard}")
    target = output_folder(out, overwrite)
    image_size, auto_channels = _first_pass(images, size, strict)
    channels = channels or auto_channels
    if channels not in (1, 3):
        raise ShardError(f"channels must be 1 or 3, got {channels}")

    splits, total, skipped = {}, sum(len(v) for v in images.splits.values()), []
    written: set[str] = set()
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"writing shards to {out}", total=total)
        for split, examples in images.splits.items():
            shards, count, batch = [], 0, []
            for i, ex in enumerate(examples):
                try:
                    batch.append((ex.key, _png(_encode(ex, channels, size, image_size)), ex.label))
                except ImageError as exc:  # unreadable; a size mismatch is the set's problem, never skipped
                    if strict:
                        raise
                    skipped.append({"image": ex.origin or ex.key, "reason": str(exc)})
                bar.advance(task)
                if len(batch) == per_shard or (i == len(examples) - 1 and batch):
                    path = target / f"{split}-{len(shards):06d}.tar"
                    shards.append(_write_shard(path, batch))
                    written.add(path.name)
                    count, batch = count + len(batch), []
            splits[split] = {"count": count, "shards": shards}
    if target == out:
        for stale in out.glob("*.tar"):
            if stale.name not in written and SHARD_NAME.match(stale.name):
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
        "skipped": {"count": len(skipped), "images": skipped[:100]},
    }
    atomic_write_bytes(target / MANIFEST, json.dumps(manifest, indent=2).encode())
    if target != out:
        _swap_in(target, out)
    return out / MANIFEST


def _encode(ex: Example, channels: int, size: int | None, image_size: int) -> Image.Image:
    img = _prepare(ex.load(), channels, size)
    if img.size != (image_size, image_size):
        raise SourceError(
            f"{ex.origin or ex.key} is {img.size[0]}x{img.size[1]} but earlier images are {image_size}x{image_size}: "
            "pass --size to resize every image"
        )
    return img
