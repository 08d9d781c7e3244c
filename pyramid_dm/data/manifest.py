"""The manifest JSON written beside a shard set: what the shards hold and how to check them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

MANIFEST = "manifest.json"
FORMAT = "pyramid_dm.shards/1"


class ShardError(UserError):
    """A shard set that cannot be used; the message names the file at fault and what to do."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file, fsync, then rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Manifest:
    path: Path
    data: dict

    @classmethod
    def load(cls, location: str | Path) -> Manifest:
        """``location`` is a shard directory or its manifest.json."""
        path = Path(location)
        if path.is_dir():
            path = path / MANIFEST
        if not path.exists():
            if path.parent.is_dir() and any(path.parent.glob("*.tar")):
                raise ShardError(
                    f"{path} is missing: the shard set in {path.parent} is incomplete (an interrupted "
                    "`python -m pyramid_dm shards` run?); write it again with --overwrite"
                )
            raise ShardError(
                f"shard path {location} does not exist or has no {MANIFEST}; "
                "write shards with `python -m pyramid_dm shards` first"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ShardError(f"{path}: unreadable manifest ({exc})") from exc
        if data.get("format") != FORMAT:
            raise ShardError(f"{path}: unknown manifest format {data.get('format')!r} (expected {FORMAT!r})")
        return cls(path, data)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def image_size(self) -> int:
        return int(self.data["image_size"])

    @property
    def channels(self) -> int:
        return int(self.data["channels"])

    @property
    def classes(self) -> list[str] | None:
        return self.data.get("classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes or [])

    @property
    def name(self) -> str:
        return self.data.get("name") or self.root.name

    def count(self, split: str) -> int:
        return int(self.split(split)["count"])

    def split(self, split: str) -> dict:
        try:
            return self.data["splits"][split]
        except KeyError:
            raise ShardError(f"{self.path}: no {split!r} split (has {sorted(self.data['splits'])})") from None

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / s["file"] for s in self.split(split)["shards"]]

    def check(self, split: str, checksums: bool = False) -> None:
        """Fast preflight: every shard exists with the recorded size (catches empty and truncated files);
        ``checksums=True`` also compares SHA-256 (reads every byte)."""
        for entry in self.split(split)["shards"]:
            path = self.root / entry["file"]
            if not path.exists():
                raise ShardError(f"shard {path} listed in {self.path} is missing")
            size = path.stat().st_size
            if size == 0:
                raise ShardError(f"shard {path} is empty (0 bytes); write the shard set again with --overwrite")
            if size != entry["bytes"]:
                raise ShardError(
                    f"shard {path} has {size} bytes but {self.path} records {entry['bytes']}: truncated or "
                    "replaced; write the shard set again with --overwrite"
                )
            if checksums and sha256_file(path) != entry["sha256"]:
                raise ShardError(f"shard {path} fails its SHA-256 check against {self.path}: corrupt")
