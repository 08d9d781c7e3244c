"""Built-in shard sets, written on first use into a cache directory: ``builtin:digits``, ``builtin:fashion_mnist``,
``builtin:photos_64`` and ``builtin:photos_128`` (10,000 + 1,000 crops of real photographs, :mod:`.photos`).

The cache is ``$PYRAMID_DM_CACHE`` or ``~/.cache/pyramid_dm``. Concurrent first uses (several DDP ranks) are safe:
each process writes into its own staging directory and renames it into place; the first rename wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .manifest import MANIFEST, ShardError
from .photos import photo_crops
from .shards import write_shards
from .sources import FASHION_MNIST_DIR, idx_dataset, sklearn_digits

PREFIX = "builtin:"
BUILTINS = {
    # name: (loader, samples per shard)
    "digits": (lambda: sklearn_digits(val_fraction=0.1, seed=0), 100),
    "fashion_mnist": (lambda: idx_dataset(FASHION_MNIST_DIR), 2500),
    "photos_64": (lambda: photo_crops(64, 10000, 1000), 1000),
    "photos_128": (lambda: photo_crops(128, 10000, 1000), 1000),
}


def cache_dir() -> Path:
    return Path(os.environ.get("PYRAMID_DM_CACHE", Path.home() / ".cache" / "pyramid_dm"))


def shard_location(spec: str, progress: bool = False) -> Path:
    """The shard directory a ``data.shards`` value names: ``builtin:NAME`` (written on first use) or a path."""
    return resolve_builtin(spec, progress) if spec.startswith(PREFIX) else Path(spec).expanduser()


def resolve_builtin(spec: str, progress: bool = False) -> Path:
    """Path of the shard directory for ``builtin:NAME``, writing it on first use."""
    name = spec.removeprefix(PREFIX)
    if name not in BUILTINS:
        raise ShardError(f"unknown built-in data set {spec!r}; choose one of {[PREFIX + n for n in BUILTINS]}")
    target = cache_dir() / "shards" / name
    if (target / MANIFEST).exists():
        return target
    loader, per_shard = BUILTINS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        write_shards(loader(), staging, per_shard=per_shard, name=name, progress=progress)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / MANIFEST).exists():  # a stale, incomplete target (no manifest): replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
