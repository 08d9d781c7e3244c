"""``shards encode``'s writer: a shard set copied sample for sample with each sample's first-stage latents added
(the format: :mod:`.encoded`)."""

from __future__ import annotations

import datetime as dt
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import Progress

from .datamodule import decode_sample
from .encoded import FLIPPED, LATENTS, encoded_record, npy_bytes
from .manifest import MANIFEST, Manifest, ShardError, atomic_write_bytes, sha256_file
from .shards import _swap_in, output_folder, write_tar


def _tar_samples(path: Path) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """The samples of one tar shard in order: (key, [(member name, bytes), ...]); the key is the name up to its first
    dot, as webdataset groups them."""
    samples: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                key = member.name.split(".", 1)[0]
                samples.setdefault(key, []).append((member.name, tar.extractfile(member).read()))
    return list(samples.items())


def write_encoded_shards(
    manifest: Manifest,
    out: Path,
    encode: Callable[[torch.Tensor], torch.Tensor],
    record: dict,
    hflip: bool = False,
    batch_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Copy the shard set of ``manifest`` to ``out`` with every sample's latents added: ``encode`` maps a batch of
    images in [-1, 1] (B, C, H, W) to packed levels (B, D); ``record`` (the autoencoder's file, fingerprint and level
    shapes) goes into the manifest's ``encoded`` entry. Shard for shard, sample for sample, in order; written to a
    staging folder and swapped in when complete, as ``shards`` does. An unreadable image is an error naming it."""
    if encoded_record(manifest) is not None:
        raise ShardError(f"{manifest.path} already holds encoded latents; encode the image shards it was made from")
    if out.resolve() == manifest.root.resolve():
        raise ShardError(f"--out {out} is the input shard set itself; write the encoded set to a new folder")
    target = output_folder(out, overwrite)
    size, channels = manifest.image_size, manifest.channels
    data = json.loads(json.dumps(manifest.data))
    total = sum(manifest.count(split) for split in manifest.data["splits"])
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"encoding {manifest.root} into {out}", total=total)
        for split in manifest.data["splits"]:
            written = []
            for path in manifest.shard_paths(split):
                samples = _tar_samples(path)
                entries = []
                for start in range(0, len(samples), batch_size):
                    chunk = samples[start : start + batch_size]
                    images = torch.stack(
                        [
                            decode_sample({"__key__": key, "__url__": str(path), **_by_extension(members)},
                                          channels, size, hflip=False, num_classes=None)[0]
                            for key, members in chunk
                        ]
                    )  # fmt: skip
                    latents = [encode(images)] + ([encode(images.flip(-1))] if hflip else [])
                    for i, (key, members) in enumerate(chunk):
                        extra = [(f"{key}.{LATENTS}", npy_bytes(latents[0][i].numpy()))]
                        if hflip:
                            extra.append((f"{key}.{FLIPPED}", npy_bytes(latents[1][i].numpy())))
                        entries.append(members + extra)
                    bar.advance(task, len(chunk))
                written.append(write_tar(target / path.name, entries))
            data["splits"][split]["shards"] = written
    data["source"] = f"shards encode of {manifest.path}"
    data["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data["encoded"] = {**record, "hflip": bool(hflip), "from_manifest_sha256": sha256_file(manifest.path)}
    atomic_write_bytes(target / MANIFEST, json.dumps(data, indent=2).encode())
    if target != out:
        _swap_in(target, out)
    return out / MANIFEST


def _by_extension(members: list[tuple[str, bytes]]) -> dict[str, bytes]:
    return {name.split(".", 1)[1]: payload for name, payload in members if "." in name}
