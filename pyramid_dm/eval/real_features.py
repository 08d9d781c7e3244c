"""Features of real images, computed once per (shard set, split, image size, count, feature network) and cached.

The cache key hashes the manifest's per-shard SHA-256s, so rewritten shards never reuse stale statistics. Files live
in ``$PYRAMID_DM_CACHE/real_features`` (default ``~/.cache/pyramid_dm``) and are written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.builtin import cache_dir
from ..data.datamodule import read_split
from ..data.manifest import Manifest, atomic_write_bytes
from .features import FeatureExtractor, extract

log = logging.getLogger(__name__)


def safe_name(name: str, limit: int = 80) -> str:
    """A manifest's (or extractor's) name as one file-name part: no path separators, no "..", nothing hidden, at most
    ``limit`` characters (a longer name keeps its start and a hash of the whole, so that names still differ)."""
    cleaned = (re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip(".") or "data").replace("..", "_")
    if len(cleaned) > limit:
        cleaned = f"{cleaned[: limit - 13]}-{hashlib.sha256(str(name).encode()).hexdigest()[:12]}"
    return cleaned


def cache_key(manifest: Manifest, split: str, image_size: int, limit: int | None, extractor: FeatureExtractor) -> str:
    shards = [entry["sha256"] for entry in manifest.split(split)["shards"]]
    blob = json.dumps([shards, split, image_size, limit, extractor.cache_id]).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def real_features(
    manifest: Manifest,
    split: str,
    extractor: FeatureExtractor,
    image_size: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> Tensor:
    """(N, d) float32 features of the first ``limit`` images (all if None) of ``split``, resized to ``image_size``."""
    image_size = image_size or manifest.image_size
    key = cache_key(manifest, split, image_size, limit, extractor)
    path = cache_dir() / "real_features" / f"{safe_name(manifest.name)}-{split}-{safe_name(extractor.name)}-{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)["features"]
    start = time.perf_counter()
    total = limit or manifest.count(split)
    feats = []
    with tqdm(total=total, desc=f"real {split} features ({extractor.name})", disable=not progress, leave=False) as bar:
        for images, _ in read_split(manifest, split, limit, image_size):
            feats.append(extract(extractor, images))
            bar.update(len(images))
    features = torch.cat(feats)
    buf = io.BytesIO()
    torch.save({"features": features, "manifest": str(manifest.path), "split": split, "image_size": image_size}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    log.info(
        "real %s features of %s: %d images in %.1f s, cached in %s",
        split,
        manifest.name,
        len(features),
        time.perf_counter() - start,
        path,
    )
    return features
