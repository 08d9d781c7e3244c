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


def _need(ok: bool, path: Path, key: str, value, want: str) -> None:
    if not ok:
        raise ShardError(f"{path}: manifest key {key!r} is {value!r}, expected {want}; write the shard set again")


def check_manifest(data: dict, path: Path) -> None:
    """Every key a reader uses, of the right type, or one error naming the key."""
    for key in ("image_size", "channels"):
        value = data.get(key)
        _need(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1, path, key, value, "an integer >= 1"
        )
    _need(data["channels"] in (1, 3), path, "channels", data["channels"], "1 or 3")
    classes = data.get("classes")
    _need(classes is None or isinstance(classes, list), path, "classes", classes, "a list of names or null")
    splits = data.get("splits")
    _need(isinstance(splits, dict) and splits, path, "splits", splits, "an object of splits")
    for name, split in splits.items():
        _need(isinstance(split, dict), path, f"splits.{name}", split, "an object with count and shards")
        count, shards = split.get("count"), split.get("shards")
        _need(isinstance(count, int) and count >= 0, path, f"splits.{name}.count", count, "an integer >= 0")
        _need(isinstance(shards, list), path, f"splits.{name}.shards", shards, "a list")
        for i, entry in enumerate(shards):
            where = f"splits.{name}.shards[{i}]"
            _need(isinstance(entry, dict), path, where, entry, "an object")
            for key, kind in (("file", str), ("count", int), ("bytes", int), ("sha256", str)):
                value = entry.get(key)
                _need(isinstance(value, kind) and not isinstance(value, bool), path, f"{where}.{key}", value,
                      f"a{'n integer' if kind is int else ' string'}")  # fmt: skip
            _need("/" not in entry["file"] and entry["file"] not in (".", ".."), path, f"{where}.file", entry["file"],
                  "a file name in the shard directory")  # fmt: skip


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
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ShardError(f"{path}: unknown manifest format {found!r} (expected {FORMAT!r})")
        check_manifest(data, path)
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
