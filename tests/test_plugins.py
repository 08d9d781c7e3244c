"""A user's own parts, from their own module (tests/plugins/toy_parts.py, outside the package), named in YAML and on
the command line: fit -> sample -> evaluate through the CLI with a toy sampler, grid, schedule, parameterization,
training-time distribution, weighting, network, objective, pyramid layout and pyramid first stage, and search-steps
with the toy sampler and schedule; no edit to pyramid_dm (issue 25)."""

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
PYRAMID_TOYS = ["--model.init_args.network", "toy_net", "--model.init_args.unet", '{"hidden": 8}']
PYRAMID_TOYS += ["--model.init_args.objective", "toy_two_draws", "--model.init_args.layout", "toy_shared_time"]
PYRAMID_TOYS += ["--model.init_args.first_stage", "toy_halves", "--model.init_args.level_steps", "[3, 3]"]
TINY = (
    '{"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "norm_groups": 4}'
)


@pytest.fixture(scope="module")
def plugin_env(session_env) -> dict:
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    return {**session_env, "PYRAMID_DM_PLUGINS": "toy_parts", "PYTHONPATH": path}


def fit(env: dict, root: Path, name: str, config: str, *extra: str) -> Path:
    args = ["fit", "--config", config, "--exp.root", str(root), "--exp.name", name]
    args += ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.init_args.num_workers", "0"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.callbacks.num_samples", "2", *TOYS, *extra]
    proc = run_cli(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / name / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def toy_run(plugin_env, tmp_path_factory) -> Path:
    """A two-level pyramid made of nothing but the user's parts."""
    return fit(plugin_env, tmp_path_factory.mktemp("plugins"), "toy", "configs/pyramid/digits.yaml", *PYRAMID_TOYS)


def test_fit_trains_with_the_users_own_parts_named_in_the_config(toy_run):
    ckpt = torch.load(toy_run, weights_only=True)
    h = ckpt["hyper_parameters"]
    assert (h["schedule"], h["prediction"], h["training_noise"], h["loss_weighting"], h["sampler"]) == (
        "toy_linear", "toy_x0", "toy_times", "toy_weighting", "toy_euler")  # fmt: skip
    assert (h["network"], h["objective"], h["layout"], h["first_stage"]) == (
        "toy_net", "toy_two_draws", "toy_shared_time", "toy_halves")  # fmt: skip
    assert any(k.startswith("net.heads.1.") for k in ckpt["state_dict"])  # the toy network's own weights
    assert ckpt["pyramid_dm"]["level_shapes"] == [[1, 4, 4], [1, 8, 8]]  # the toy first stage's two levels


def test_sample_and_evaluate_run_the_users_sampler_and_grid(toy_run, plugin_env, tmp_path):
    args = ["sample", "--ckpt_path", str(toy_run), "--sampler", "toy_euler", "--steps", "3", "--num_samples", "2"]
    proc = run_cli([*args, "--option", "damping=0.9", "--out", str(tmp_path / "s")], plugin_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert record["sampler"] == ["toy_euler", "toy_euler"] and record["level_nfe"] == [3, 3], record
    args = ["evaluate", "--ckpt_path", str(toy_run), "--sampler", "toy_euler", "ddim", "--steps", "3"]
    args += ["--num_samples", "10", "--batch_size", "10", "--num_real", "100", "--kid_subset_size", "5"]
    proc = run_cli([*args, "--no_wandb", "--no_progress", "--out", str(tmp_path / "e")], plugin_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "e" / "results.json").read_text())["rows"]
    assert sorted(r["sampler"] for r in rows) == ["ddim", "toy_euler"] and all(r["nfe"] == 6 for r in rows)


def test_search_steps_runs_the_users_sampler_and_schedule(plugin_env, tmp_path):
    """A step-aware supernet trained with the toy schedule, parameterization, times and weighting, searched with
    the toy sampler on its toy grid."""
    widths = ["--model.init_args.step_aware", '{"widths": [1.0, 0.5]}', "--model.init_args.unet", TINY]
    ckpt = fit(plugin_env, tmp_path, "supernet", "configs/quickstart.yaml", *widths)
    study = tmp_path / "study"
    args = ["search-steps", "--ckpt_path", str(ckpt), "--sampler", "toy_euler", "--steps", "3", "--trials", "2"]
    args += ["--population", "2", "--num_samples", "8", "--batch_size", "8", "--no_progress"]
    proc = run_cli([*args, "--no_wandb", "--study", str(study)], plugin_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the default --num_real (2000) serves the embedded digits too (1,617 training images), and says so (issue 26)
    assert "the train split holds 1617 images; using all of them" in proc.stderr, proc.stderr[-2000:]
    meta = json.loads((study / "front.json").read_text())
    assert "toy_euler" in json.dumps(meta) and "toy_grid" in json.dumps(meta), json.dumps(meta)[:2000]
    assert len((study / "trials.csv").read_text().splitlines()) == 3


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

        from pyramid_dm.engine.objectives import Denoising
        from pyramid_dm.models import PyramidDiffusion

        toy_parts.CALLS.clear()
        model = PyramidDiffusion(8, 1, network="toy_net", unet={"hidden": 8}, schedule="toy_linear",
                                 num_timesteps=0, prediction="toy_x0", training_noise="toy_times",
                                 loss_weighting="toy_weighting", sampler="toy_euler", sample_steps=3,
                                 objective="toy_two_draws", layout="toy_shared_time",
                                 first_stage="toy_halves")  # fmt: skip
        images, labels = torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
        out = model.engine.objective.step(model.engine, images, labels)
        out.total.backward()
        assert set(out.logs) == {"train/loss", "train/draw_gap"}
        model.engine.fit_latent_scale(images)
        model.engine.sample(2)
        kinds = {"sampler", "discretization", "prediction", "training_noise", "weighting", "network", "objective"}
        assert set(toy_parts.CALLS) == kinds | {"schedule", "layout", "first_stage"}  # every kind ran
        assert model.engine.training_flops(4) == 2 * Denoising().training_flops(model.engine, 4)
    finally:
        sys.path.remove(str(PLUGINS))


def test_the_worked_example_of_docs_architecture_runs(tmp_path, session_env):
    """docs/architecture.md's ``my_parts.py``, as written there: its network trains and its sampler samples."""
    import re
    import subprocess
    import sys

    text = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    (tmp_path / "my_parts.py").write_text(re.search(r"`my_parts.py`.*?```python\n(.*?)```", text, re.S).group(1))
    code = (
        "import torch, my_parts\n"
        "from pyramid_dm.models import PixelDiffusion\n"
        "m = PixelDiffusion(8, 1, num_classes=3, network='tiny', unet={'hidden': 8}, sampler='damped_euler')\n"
        "m.engine.training_loss(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))[0].backward()\n"
        "x = m.engine.sample(2, steps=3, damping=0.9)\n"
        "assert type(m.engine.net).__name__ == 'TinyNet' and x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()\n"
    )
    env = {**session_env, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
