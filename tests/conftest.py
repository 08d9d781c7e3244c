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
        "HF_HOME": str(base / "hf"),  # diffusers copies a folder's pipeline.py under it (trust_remote_code)
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


@pytest.fixture(scope="session")
def stage_one(tmp_path_factory, session_env, digits_shards) -> Path:
    """Tiny stage-one runs of the digits, trained once per test session and shared by every worker process (the
    first to need them trains them under a file lock; pytest-xdist's recipe): ``ae-digits_kl`` (30 steps, its
    PatchGAN from step 10) and ``ae-digits_msvq`` (30 steps). Read-only: copy a run into your own runs root."""
    from filelock import FileLock
    from helpers import fit_run

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "stage_one"
    with FileLock(str(shared / "stage_one.lock")):
        if not (root / "done").exists():
            gan = ["--model.init_args.disc_weight", "0.5", "--model.init_args.disc_start", "10"]
            fit_run("configs/autoencoder/digits_kl.yaml", root, session_env, 30, *gan)
            fit_run("configs/autoencoder/digits_msvq.yaml", root, session_env, 30)
            (root / "done").touch()
    return root


# The suite runs in two processes (pytest-xdist, ``-n 2 --dist loadfile`` in pyproject.toml: a file's tests share its
# module fixtures on one worker). Files are handed out in collection order, so the long ones go first: the two workers
# then finish together instead of one running the longest file alone at the end. Seconds as measured in CI.
LONG_FILES = [
    "test_slurm.py",  # ~800 s: a real Slurm cluster, requeued DDP jobs, a search array
    "test_pyramid.py",  # ~500 s: the 400-step pyramid fixture, stage-one autoencoders
    "test_pyramid_flow.py",  # ~300 s
    "test_few_step_cli.py",  # ~300 s: a 400-step teacher, its ECT tuning, every few-step objective through the CLI
    "test_newcomer.py",
    "test_ddp.py",
    "test_cli.py",
    "test_hardening.py",
    "test_hardening2.py",
    "test_step_aware.py",
    "test_encoded_shards.py",
    "test_eval.py",
    "test_plugins.py",
    "test_transformer_training.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: order within a file kept


def pytest_configure(config):
    # One thread per worker process and per CLI run it starts: two workers on two cores, not four threads fighting.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
