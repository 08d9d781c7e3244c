"""Helpers shared by the tests (not fixtures)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


HANG_GUARD_S = 1800  # a test's time limit only catches a hang; a loaded 2-core machine may take 3x the usual time


@contextlib.contextmanager
def default_dtype(dtype):
    """Tensors made without a dtype (a sampler's starting noise) in ``dtype`` for the block: with a float64 model, a
    whole sampling run in float64, so that comparing two code paths does not compare float32 rounding (which a guided
    or multistep sampler over a random model can amplify by orders of magnitude)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def run_cli(args: list[str], env: dict, timeout: int = HANG_GUARD_S, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -m pyramid_dm ARGS`` from ``cwd`` (the repository root) with ``env`` added to the environment;
    ``timeout`` is a hang guard, not a speed check."""
    return subprocess.run(
        [sys.executable, "-m", "pyramid_dm", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fit_run(config: str, root: Path, env: dict, steps: int = 4, *extra: str) -> Path:
    """``fit`` of ``config`` for ``steps`` steps (validated at the last) under ``root``; the run directory."""
    args = ["fit", "--config", config, "--exp.root", str(root), "--trainer.max_steps", str(steps)]
    args += ["--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false"]
    args += ["--data.init_args.num_workers", "0", *extra]
    proc = run_cli(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = next(line.split(":", 1)[1].strip() for line in (ROOT / config).read_text().splitlines() if "name:" in line)
    return root / name


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


def make_rgb_folder(root: Path, per_class: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """A folder of colour PNGs, one sub-folder per class, as a user's own images would be: each class a coloured
    shape (disc, square, bar) of varying size and place on a varying background; classes differ in colour and form."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c, (name, count) in enumerate(per_class.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        hue = np.array([(c * 0.37) % 1, (c * 0.61 + 0.3) % 1, (c * 0.83 + 0.6) % 1])
        for i in range(count):
            cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
            shape = [
                (yy - cy) ** 2 + (xx - cx) ** 2 < r**2,
                (abs(yy - cy) < r) & (abs(xx - cx) < r),
                abs(xx - cx) < r / 3,
            ][c % 3]
            background = rng.uniform(0, 0.4, 3) + 0.2 * yy[..., None]
            img = np.where(shape[..., None], hue * rng.uniform(0.7, 1.0), background)
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def run_main(args: list[str], env: dict, monkeypatch, capsys) -> tuple[int, str]:
    """``python -m pyramid_dm ARGS`` in this process: the CLI's own code path (``cli.main``, one-line errors, exit
    status) without a new interpreter's start-up, for the many refusals a test checks; ``env`` is set for the call.
    Returns (exit status, stderr)."""
    from pyramid_dm.cli import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    return code, capsys.readouterr().err
