"""Flow matching and Pyramidal Flow Matching through the CLI: fit, sample and evaluate in pixel and latent space, and
a trained pyramid-flow model whose fine stage continues its coarse stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import fit_run as fit
from helpers import run_cli

from pyramid_dm.engine.load import build_model


@pytest.fixture(scope="module")
def root(tmp_path_factory, stage_one) -> Path:
    """A runs root holding a tiny KL autoencoder of the digits (stage one of the latent runs; conftest's)."""
    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(stage_one / "ae-digits_kl", root / "ae-digits_kl")
    return root


WARMUP = ["--model.init_args.warmup_steps", "50"]  # the config's 500-step warm-up is for its 3000 steps


@pytest.fixture(scope="module")
def trained_pyramid_flow(root, session_env) -> Path:
    """The digits pyramid flow (4x4 stage over t in [0.2, 1], 8x8 stage after it) trained for 400 steps with a
    50-step warm-up (its fine stage's agreement: 0.178 against 0.443 for another sample; 0.17 / 0.45 after 1000)."""
    bounds = ["--model.init_args.stage_bounds", "[1.0, 0.2, 0.0]", "--trainer.callbacks.every_n_steps", "100000"]
    run = fit("configs/pyramid/digits_pyramid_flow.yaml", root, session_env, 400, *bounds, *WARMUP)
    return run / "checkpoints" / "last.ckpt"


def test_the_fine_stage_continues_the_coarse_stage(trained_pyramid_flow):
    """The coarse stage ends at x_end = 0.8 Down(x0) + 0.2 eps; the finished 8x8 sample, average-pooled, must be the
    x0 it was heading for: RMS of x_end - 0.8 Down(sample) within 1.5x the 0.2 noise it still holds and below 0.5x
    the same error against another sample (measured: 0.17 and 0.45)."""
    path = str(trained_pyramid_flow)
    model = build_model(torch.load(path, weights_only=True), path, None, torch.device("cpu"))
    assert model.layout.stage_windows(model.num_levels)[0] == (pytest.approx(0.2), 1.0)
    g = torch.Generator().manual_seed(0)
    images, (coarse, fine) = model.sample(200, generator=g, return_levels=True)
    pooled = F.avg_pool2d(fine, 2)
    err = (coarse - 0.8 * pooled).pow(2).mean().sqrt()
    other = (coarse - 0.8 * pooled.roll(1, dims=0)).pow(2).mean().sqrt()
    print(f"coarse-stage agreement: RMS {float(err):.3f}, against another sample {float(other):.3f}")
    assert err < 1.5 * 0.2 and err < 0.5 * other, (float(err), float(other))
    assert float(images.std()) > 0.3  # digits, not a blur: the pixel range is used


def test_pyramid_flow_samples_and_evaluates_per_stage_through_the_cli(trained_pyramid_flow, session_env, tmp_path):
    out = tmp_path / "samples"
    args = ["sample", "--ckpt_path", str(trained_pyramid_flow), "--sampler", "flow_euler", "--steps", "4", "3"]
    proc = run_cli([*args, "--num_samples", "4", "--out", str(out)], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "samples.json").read_text())
    assert record["level_nfe"] == [4, 3] and record["levels"] == [[1, 4, 4], [1, 8, 8]]
    args = ["evaluate", "--ckpt_path", str(trained_pyramid_flow), "--sampler", "dpmpp_2m", "--level_steps", "4", "2"]
    args += ["--num_samples", "20", "--batch_size", "10", "--num_real", "200", "--kid_subset_size", "10"]
    proc = run_cli([*args, "--no_wandb", "--no_progress", "--out", str(tmp_path / "eval")], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    per_call = [lv["gflops_per_call"] for lv in row["levels"]]
    assert row["nfe"] == 6 and [lv["nfe"] for lv in row["levels"]] == [4, 2] and per_call[0] < per_call[1]
    assert row["gflops_per_sample"] == pytest.approx(4 * per_call[0] + 2 * per_call[1])
    # sampled with another number of stages: named, nothing written
    bad = run_cli([*args[:6], "4", "2", "2", "--no_wandb", "--out", str(tmp_path / "bad")], session_env)
    assert bad.returncode == 2 and "--level_steps [4, 2, 2] gives 3 values but the model has 2 levels" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_pyramid_flow_in_a_latent_space_trains_logs_stage_strips_and_samples(root, session_env, tmp_path):
    run = fit(
        "configs/pyramid/digits_latent_pyramid_flow.yaml",
        root,
        session_env,
        4,
        "--trainer.callbacks.every_n_steps",
        "4",
    )
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    scale = saved["state_dict"]["latent_scale"]
    assert saved["pyramid_dm"]["level_shapes"] == [[4, 2, 2], [4, 4, 4]]  # the 4x4x4 latent and its 2x2 average
    assert torch.isfinite(scale).all() and float(scale[0]) == float(scale[1]) != 1.0  # one scale: pooling commutes
    assert list((run / "samples").glob("step*-coarse_to_fine.png")) and list((run / "samples").glob("step*-level0.png"))
    out = tmp_path / "samples"
    proc = run_cli(
        ["sample", "--ckpt_path", str(ckpt), "--steps", "3", "2", "--num_samples", "4", "--out", str(out)], session_env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "samples.json").read_text())
    assert record["level_nfe"] == [3, 2] and len(list(out.glob("0*.png"))) == 4
    args = [
        "evaluate",
        "--ckpt_path",
        str(ckpt),
        "--level_steps",
        "2",
        "2",
        "--num_samples",
        "10",
        "--batch_size",
        "10",
    ]
    args += [
        "--num_real",
        "100",
        "--kid_subset_size",
        "5",
        "--no_wandb",
        "--no_progress",
        "--out",
        str(tmp_path / "eval"),
    ]
    proc = run_cli(args, session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    assert row["decoder_gflops"] > 0 and row["nfe"] == 4


def test_a_pixel_flow_model_fits_and_samples_with_every_kind_of_sampler(session_env, tmp_path, digits_shards):
    flow = ["--model.init_args.schedule", "flow", "--model.init_args.num_timesteps", "0"]
    flow += ["--model.init_args.prediction", "flow", "--model.init_args.training_noise", "mode"]
    run = fit("configs/quickstart.yaml", tmp_path, session_env, 4, *flow, "--trainer.callbacks.every_n_steps", "100000")
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["prediction"] == "flow"
    for sampler in ("flow_euler", "dpmpp_2m", "ddpm"):
        out = tmp_path / sampler
        proc = run_cli(
            [
                "sample",
                "--ckpt_path",
                str(ckpt),
                "--sampler",
                sampler,
                "--steps",
                "3",
                "--num_samples",
                "2",
                "--out",
                str(out),
            ],
            session_env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "samples.json").read_text())["nfe"] == 3
