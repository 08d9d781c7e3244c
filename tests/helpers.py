"""Helpers shared by the tests (not fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


HANG_GUARD_S = 1800  # a test's time limit only catches a hang; a loaded 2-core machine may take 3x the usual time


def run_cli(args: list[str], env: dict, timeout: int = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """``python -m pyramid_dm ARGS`` from the repository root with ``env`` added to the environment; ``timeout`` is
    a hang guard, not a speed check."""
    return subprocess.run(
        [sys.executable, "-m", "pyramid_dm", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wandb_inspect(run_dir: Path, summary: bool = True) -> dict:
    """``wandb leet inspect --json`` of an offline W&B run directory (its config, and its summary or rows)."""
    args = ["wandb", "leet", "inspect", *(["--summary"] if summary else []), "--json", str(run_dir)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def execute_notebook(name: str, env: dict):
    """Run ``notebooks/NAME`` top to bottom with ``env`` set (and the repository importable); returns the executed
    notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=HANG_GUARD_S, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb
