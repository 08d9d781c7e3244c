"""Shared fixtures: every test runs with W&B offline in temporary directories and a private data cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def session_env(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("env")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYRAMID_DM_CACHE": str(base / "cache"),
        "WANDB_DIR": str(base / "wandb"),
        "WANDB_CACHE_DIR": str(base / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(base / "wandb_config"),
        "WANDB_DATA_DIR": str(base / "wandb_data"),
    }
    for value in env.values():
        if value.startswith(str(base)):
            Path(value).mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture(autouse=True)
def _isolated_env(session_env, monkeypatch):
    for key, value in session_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # A wandb.init in this process (test_compat) exports WANDB_SERVICE so that children share its wandb-core; a CLI run
    # started from here would then attach to it, and a run killed with -9 would stay "in use" there, failing the resume.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(scope="session")
def digits_shards(session_env) -> Path:
    """The built-in digits shard set, written once per test session into the private cache."""
    old = os.environ.get("PYRAMID_DM_CACHE")
    os.environ["PYRAMID_DM_CACHE"] = session_env["PYRAMID_DM_CACHE"]
    try:
        from pyramid_dm.data.builtin import resolve_builtin

        return resolve_builtin("builtin:digits")
    finally:
        if old is None:
            os.environ.pop("PYRAMID_DM_CACHE")
        else:
            os.environ["PYRAMID_DM_CACHE"] = old
