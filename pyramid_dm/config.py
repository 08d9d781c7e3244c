"""Config files: ``defaults:`` composition (pieces relative to the file, loaded first) and OmegaConf resolution."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from .errors import UserError


def config_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """``path``'s ``defaults:`` pieces (recursively, in order), then ``path`` itself."""
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise UserError(f"config {path}: circular defaults ({' -> '.join(map(str, seen))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {path}: invalid YAML ({exc})") from exc
    defaults = data.get("defaults") or [] if isinstance(data, dict) else []
    chain = []
    for piece in defaults:
        chain += config_chain(path.parent / piece, (*seen, path.resolve()))
    return [*chain, path]


def load_config(path: str | Path, compose: bool = True) -> dict:
    """The composed and resolved config as a plain dict, as ``fit`` sees it before command-line overrides.
    ``compose=False`` reads one file alone (a run's saved ``config.yaml`` is already composed)."""
    if not Path(path).is_file():
        raise UserError(f"config file {path} does not exist")
    chain = config_chain(Path(path)) if compose else [Path(path)]
    merged = OmegaConf.merge(*(OmegaConf.load(p) for p in chain))
    try:
        data = OmegaConf.to_container(merged, resolve=True)
    except Exception as exc:
        raise UserError(f"config {path}: cannot resolve interpolations ({exc})") from exc
    data.pop("defaults", None)
    return data
