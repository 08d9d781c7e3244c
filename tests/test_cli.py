"""End to end through ``python -m pyramid_dm``: fit on real shards, read the offline W&B run back, resume, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import run_cli, wandb_inspect

from pyramid_dm.eval.history import run_history
from pyramid_dm.models import ema_net_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


FAST = [
    "--trainer.val_check_interval",
    "3",
    "--trainer.log_every_n_steps",
    "1",
    "--data.init_args.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
]


def run(args: list[str], env: dict):
    return run_cli(args, env)


def fit(root: Path, env: dict, *extra: str, steps: int = 6):
    args = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(root), "--trainer.max_steps", str(steps)]
    return run([*args, *FAST, *extra], env)


def inspect_run(run_dir: Path) -> dict:
    return wandb_inspect(run_dir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_env, digits_shards):
    root = tmp_path_factory.mktemp("runs")
    proc = fit(root, session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "quickstart"


def test_fit_writes_checkpoints_config_and_an_offline_wandb_run(trained):
    assert (trained / "checkpoints" / "last.ckpt").exists()
    assert len(list((trained / "checkpoints").glob("best-step*.ckpt"))) == 1
    assert "quickstart" in (trained / "config.yaml").read_text()
    assert sorted(p.name for p in (trained / "samples").glob("*.png")) == ["step00000003.png", "step00000006.png"]
    runs = list((trained / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    rec = inspect_run(runs[0])
    assert rec["state"] == "finished" and rec["name"] == "quickstart" and set(rec["tags"]) == {"pixel", "digits"}
    summary = rec["summary"]
    for key in ("train/loss", "train/grad_norm", "lr-AdamW", "train/device/samples_per_sec"):
        assert isinstance(summary[key], float), key
    assert set(summary["val/loss"]) == {"min", "last"}  # define_metric: the best validation, and the last
    assert summary["trainer/global_step"] == 5 and 0 < summary["val/loss"]["min"] <= summary["val/loss"]["last"]
    assert summary["data/skipped"] == 0 and summary["data/skip_rate"] == 0.0  # the data's health is logged too
    image = summary["samples"]
    assert image["_type"] == "images/separated" and "step 6 | dpmpp_2m 20 steps" in image["captions"][0]
    png = runs[0] / "files" / image["filenames"][0]
    assert png.exists() and png.stat().st_size > 100
    # a validation's rows share one W&B step: val/loss (Lightning's) and its sample grid (ours) at 2 and 5
    rows = run_history(runs[0])
    val = [r["trainer/global_step"] for r in rows if "val/loss" in r]
    grids = [r["trainer/global_step"] for r in rows if "samples.count" in r]
    assert val == grids == [2, 5], (val, grids)
    records = subprocess.run(["wandb", "leet", "inspect", "--json", str(runs[0])], capture_output=True, text=True)
    run_record = next(json.loads(line)["run"] for line in records.stdout.splitlines() if '"type":"run"' in line)
    assert run_record["run_group"] == "quickstart"
    config = rec["config"]
    assert config["cli_config"]["exp"]["name"] == "quickstart" and config["image_size"] == 8
    assert config["cli_config"]["model"]["class_path"] == "pyramid_dm.models.PixelDiffusion"


def test_ema_weights_load_into_the_bare_network(trained):
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    net = ema_net_from_checkpoint(str(trained / "checkpoints" / "last.ckpt"))
    ema = {k[len("ema.module.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    raw = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    state = net.state_dict()
    assert state.keys() == ema.keys() and all(torch.equal(state[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # the EMA really differs from the raw weights
    out = net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_resume_continues_global_step_optimizer_and_ema(trained, session_env, tmp_path):
    before = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    proc = fit(trained.parent, session_env, "--ckpt_path", "last", steps=9)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    assert before["global_step"] == 6 and after["global_step"] == 9
    assert int(after["state_dict"]["ema.n_averaged"]) == 9
    assert after["optimizer_states"][0]["state"][0]["step"] == 9
    assert (trained / "wandb_run_id").read_text().strip() in {
        p.name.split("-")[-1] for p in (trained / "wandb").glob("offline-run-*")
    }
    runs = sorted((trained / "wandb").glob("offline-run-*"))
    assert len({p.name.split("-")[-1] for p in runs}) == 1  # the same W&B run id, continued
    # W&B's own step continues after the first part's rows (offline W&B cannot ask a server where the run stopped)
    first, second = ([row["_step"] for row in run_history(part)] for part in runs)
    assert min(second) == max(first) + 1


def test_fresh_start_on_an_existing_run_is_refused_and_loses_nothing(trained, session_env):
    last = (trained / "checkpoints" / "last.ckpt").read_bytes()
    proc = fit(trained.parent, session_env)
    assert proc.returncode == 2
    assert "already holds checkpoints" in proc.stderr and "--ckpt_path last" in proc.stderr
    assert (trained / "checkpoints" / "last.ckpt").read_bytes() == last


def test_unknown_config_key_names_it(session_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"defaults: [{ROOT}/configs/quickstart.yaml]\nmodel:\n  init_args:\n    learning_rate: 0.1\n")
    proc = run(["fit", "--config", str(bad), "--exp.root", str(tmp_path)], session_env)
    assert proc.returncode != 0 and "learning_rate" in proc.stderr
    proc = run(["fit", "--config", "configs/quickstart.yaml", "--trainer.max_stepz", "3"], session_env)
    assert proc.returncode != 0 and "max_stepz" in proc.stderr
    proc = run(
        ["fit", "--config", "configs/pyramid/digits.yaml", "--model.init_args.frido_noise_mx", "0.2"], session_env
    )
    assert proc.returncode != 0 and "frido_noise_mx" in proc.stderr  # a family's own options are typed too


def test_missing_shards_and_size_mismatch_are_named(trained, session_env, tmp_path):
    proc = fit(tmp_path, session_env, "--data.init_args.shards", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "nope does not exist" in proc.stderr
    ckpt = trained / "checkpoints" / "last.ckpt"
    args = ["validate", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), *FAST]
    proc = run([*args, "--ckpt_path", str(ckpt), "--data.init_args.resize", "16"], session_env)
    assert proc.returncode == 2 and "(1, 16, 16)" in proc.stderr and "(1, 8, 8)" in proc.stderr


def test_validate_subcommand_and_bf16(trained, session_env, tmp_path):
    args = ["validate", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), *FAST]
    proc = run([*args, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")], session_env)
    assert proc.returncode == 0 and "val/loss" in proc.stdout
    proc = fit(tmp_path, session_env, "--trainer.precision", "bf16-mixed", steps=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(tmp_path / "quickstart/checkpoints/last.ckpt", weights_only=False)["global_step"] == 3


def test_edm_model_config_trains_and_its_run_config_says_so(tmp_path, session_env, digits_shards):
    """configs/model/pixel_small_edm.yaml composes onto the quickstart, trains and samples its grids."""
    cfg = tmp_path / "edm.yaml"
    cfg.write_text(
        f"defaults: [{ROOT}/configs/quickstart.yaml, {ROOT}/configs/model/pixel_small_edm.yaml]\nexp:\n  name: edm\n"
    )
    args = ["fit", "--config", str(cfg), "--exp.root", str(tmp_path), "--trainer.max_steps", "3", *FAST]
    proc = run(args, session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = (tmp_path / "edm" / "config.yaml").read_text()
    assert "prediction: edm" in saved and "training_noise: lognormal" in saved and "loss_weighting: edm" in saved
    assert (tmp_path / "edm" / "samples" / "step00000003.png").is_file()


def test_optimizer_and_lr_scheduler_come_from_the_config(session_env, tmp_path, digits_shards):
    extra = ["--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.05"]
    extra += ["--model.init_args.optimizer.momentum", "0.9"]
    extra += ["--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.ConstantLR"]
    extra += ["--model.init_args.lr_scheduler.factor", "0.5"]
    proc = fit(tmp_path, session_env, *extra, steps=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "quickstart" / "checkpoints" / "last.ckpt", weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["lr"] == pytest.approx(0.025)  # SGD at 0.05, halved by the scheduler
    assert "optimizer" not in ckpt["hyper_parameters"]  # the callables stay in config.yaml, out of the checkpoint
    config = (tmp_path / "quickstart" / "config.yaml").read_text()
    assert "torch.optim.SGD" in config and "ConstantLR" in config
