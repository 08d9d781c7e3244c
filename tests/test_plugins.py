"""A user's own parts, from their own module (tests/plugins/toy_parts.py, outside the package), named in YAML and on
the command line: fit -> sample -> evaluate through the CLI with a toy sampler, grid, schedule, parameterization,
training-time distribution and weighting, and no edit to pyramid_dm (issue 25)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import run_cli

PLUGINS = Path(__file__).parent / "plugins"
TOYS = ["--model.init_args.schedule", "toy_linear", "--model.init_args.num_timesteps", "0"]
TOYS += ["--model.init_args.prediction", "toy_x0", "--model.init_args.training_noise", "toy_times"]
TOYS += ["--model.init_args.loss_weighting", "toy_weighting", "--model.init_args.sampler", "toy_euler"]
TOYS += ["--model.init_args.sample_steps", "4"]
TINY = (
    '{"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "norm_groups": 4}'
)


@pytest.fixture(scope="module")
def plugin_env(session_env) -> dict:
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    return {**session_env, "PYRAMID_DM_PLUGINS": "toy_parts", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def toy_run(plugin_env, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugins")
    args = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(root), "--exp.name", "toy"]
    args += ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.init_args.num_workers", "0"]
    args += ["--trainer.enable_progress_bar", "false", "--model.init_args.unet", TINY]
    args += ["--trainer.callbacks.num_samples", "2", *TOYS]
    proc = run_cli(args, plugin_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "toy" / "checkpoints" / "last.ckpt"


def test_fit_trains_with_the_users_own_parts_named_in_the_config(toy_run):
    h = torch.load(toy_run, weights_only=True)["hyper_parameters"]
    assert (h["schedule"], h["prediction"], h["training_noise"], h["loss_weighting"], h["sampler"]) == (
        "toy_linear", "toy_x0", "toy_times", "toy_weighting", "toy_euler")  # fmt: skip


def test_sample_and_evaluate_run_the_users_sampler_and_grid(toy_run, plugin_env, tmp_path):
    args = ["sample", "--ckpt_path", str(toy_run), "--sampler", "toy_euler", "--steps", "3", "--num_samples", "2"]
    proc = run_cli([*args, "--option", "damping=0.9", "--out", str(tmp_path / "s")], plugin_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert record["sampler"] in ("toy_euler", ["toy_euler"]) and record["nfe"] == 3, record
    args = ["evaluate", "--ckpt_path", str(toy_run), "--sampler", "toy_euler", "ddim", "--steps", "3"]
    args += ["--num_samples", "10", "--batch_size", "10", "--num_real", "100", "--kid_subset_size", "5"]
    proc = run_cli([*args, "--no_wandb", "--no_progress", "--out", str(tmp_path / "e")], plugin_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "e" / "results.json").read_text())["rows"]
    assert sorted(r["sampler"] for r in rows) == ["ddim", "toy_euler"] and all(r["nfe"] == 3 for r in rows)


def test_without_the_plugin_the_name_is_unknown_and_says_where_parts_come_from(toy_run, session_env, tmp_path):
    proc = run_cli(["sample", "--ckpt_path", str(toy_run), "--out", str(tmp_path / "x")], session_env)
    assert proc.returncode == 2 and "PYRAMID_DM_PLUGINS" in proc.stderr, proc.stderr[-2000:]
    assert "toy_linear" in proc.stderr or "toy_x0" in proc.stderr or "toy_euler" in proc.stderr, proc.stderr[-2000:]
    proc = run_cli(["sample", "--ckpt_path", str(toy_run)], {**session_env, "PYRAMID_DM_PLUGINS": "no_such_parts"})
    assert proc.returncode == 2 and "cannot import plug-in module 'no_such_parts'" in proc.stderr, proc.stderr[-2000:]


def test_each_toy_part_really_runs_in_process():
    import sys

    sys.path.insert(0, str(PLUGINS))
    try:
        import toy_parts

        from pyramid_dm.models import PixelDiffusion

        model = PixelDiffusion(8, 1, unet=json.loads(TINY), schedule="toy_linear", num_timesteps=0,
                               prediction="toy_x0", training_noise="toy_times", loss_weighting="toy_weighting",
                               sampler="toy_euler", sample_steps=3)  # fmt: skip
        toy_parts.CALLS.clear()
        model.engine.training_loss(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))[0].backward()
        model.engine.sample(2)
        assert set(toy_parts.CALLS) == {"sampler", "discretization", "prediction", "training_noise", "weighting"}
    finally:
        sys.path.remove(str(PLUGINS))
