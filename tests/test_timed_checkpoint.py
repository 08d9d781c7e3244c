"""A run killed between two validations keeps its progress: the trainer pieces add a second ``ModelCheckpoint`` that
rewrites ``last.ckpt`` every 15 minutes of training (``train_time_interval``), sharing the file with the validation
checkpoint (no ``last-v1.ckpt``), and ``fit --ckpt_path last`` resumes from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from helpers import ROOT, run_cli

from pyramid_dm.config import load_config

TIMED = {"save_top_k": 0, "save_last": True, "enable_version_counter": False, "train_time_interval": "0:15:00"}


def timed_checkpoints(config: str) -> list[dict]:
    callbacks = load_config(ROOT / config)["trainer"]["callbacks"]
    return [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]


def test_every_trainer_piece_and_own_recipe_checkpoints_on_time():
    own = ("pixel_32", "autoencoder_64", "classifier_32", "try_32")
    for config in (*(f"configs/own/{name}.yaml" for name in own), "configs/quickstart.yaml"):
        best, timed = timed_checkpoints(config)
        assert best["monitor"] == "val/loss" and best["enable_version_counter"] is False, config
        assert {k: timed.get(k) for k in TIMED} == TIMED and timed["dirpath"] == best["dirpath"], config


def test_a_run_killed_between_validations_resumes_from_its_timed_checkpoint(tmp_path, session_env):
    piece = (ROOT / "configs" / "trainer" / "default.yaml").read_text().replace('"0:15:00"', '"0:00:02"')
    assert '"0:00:02"' in piece
    (tmp_path / "trainer.yaml").write_text(piece)
    data, model = (str(ROOT / "configs" / p) for p in ("data/digits.yaml", "model/pixel_small.yaml"))
    pieces = [str(tmp_path / "trainer.yaml"), data, model]
    (tmp_path / "cfg.yaml").write_text(f"defaults: {pieces}\nexp:\n  name: timed\n")
    run = tmp_path / "timed"

    def fit(max_steps: int, val_every: int) -> list[str]:
        args = ["fit", "--config", str(tmp_path / "cfg.yaml"), "--exp.root", str(tmp_path)]
        args += ["--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(val_every)]
        return [*args, "--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]

    args = fit(100000, 100000)  # no validation, hence no validation checkpoint, before the kill
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyramid_dm", *args], cwd=ROOT, env={**os.environ, **session_env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end and proc.poll() is None:
            if last.is_file() and torch.load(last, weights_only=False, mmap=True)["global_step"] >= 2:
                break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no graceful stop: only what was already written survives
        stderr = proc.communicate()[1].decode()[-3000:]
    assert last.is_file(), stderr
    step = torch.load(last, weights_only=False)["global_step"]
    assert step >= 2 and not list(run.glob("checkpoints/best-*")) and not list(run.glob("checkpoints/last-v*"))
    resumed = run_cli([*fit(step + 2, 1), "--ckpt_path", "last"], session_env)  # validates (and saves) every step
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == step + 2
    assert not list(run.glob("checkpoints/last-v*"))  # both checkpoints share last.ckpt
