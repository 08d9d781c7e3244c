"""A newcomer's path through the CLI (issue 19): their own small RGB folder, README's own-data recipe, commands run
from other directories, defaults that say what they did, messages that point the right way, and a quiet terminal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from helpers import HANG_GUARD_S, ROOT, make_rgb_folder, run_cli

from pyramid_dm.cli import COMMANDS, LIGHTNING_COMMANDS, main
from pyramid_dm.eval.history import run_history

QUICK = ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8"]
# what a newcomer's terminal used to show and should not: Lightning's LitLogger tip, W&B's anonymous-setting warning,
# torch's LeafSpec deprecation (through Lightning), the progress bar's "Epoch 3/-2", ThroughputMonitor's FLOPs warning
NOISE = ("litlogger", "anonymous setting", "LeafSpec", "/-2", "flops_per_batch")


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, session_env):
    """README's own-data recipe, typed from the user's own folder with relative paths: shards, then fit with
    configs/own/pixel_32.yaml (a narrower body and a few steps, so that it runs in CI)."""
    work = tmp_path_factory.mktemp("newcomer")
    make_rgb_folder(work / "photos", {"cat": 8, "dog": 8, "owl": 8}, size=48)
    proc = run_cli(["shards", "folder", "photos", "--out", "shards/mine", "--size", "32"], session_env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    fit = ["fit", "--config", str(ROOT / "configs/own/pixel_32.yaml"), "--data.init_args.shards", "shards/mine"]
    fit += ["--exp.root", "runs", "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", *QUICK]
    fit += ["--model.init_args.unet.base_channels", "16"]
    proc = run_cli(fit, session_env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, work / "runs" / "own-pixel-32", proc


def test_readme_own_data_recipe_trains_and_stores_absolute_paths(own_run):
    work, run, proc = own_run
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert f"shards: {work / 'shards' / 'mine'}" in (run / "config.yaml").read_text()  # absolute, as typed relative
    out = proc.stdout + proc.stderr
    assert [text for text in NOISE if text in out] == []
    assert "Epoch 1" in out  # the progress bar is there, without Lightning's "/-2"
    # the model summary gives the training FLOPs per step, not Lightning's "Total FLOPs: 0" (no example input)
    assert "Training FLOPs per step (forward + backward)" in out and "total flops" not in out.lower()


def test_evaluate_and_sample_work_from_another_directory(own_run, session_env, tmp_path):
    _, run, _ = own_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    args = ["evaluate", "--ckpt_path", ckpt, "--num_samples", "6", "--batch_size", "6", "--no_wandb"]
    proc = run_cli([*args, "--features", "random", "--no_progress"], session_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli(["sample", "--ckpt_path", ckpt, "--num_samples", "4", "--steps", "3"], session_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(next(run.glob("sampled/last-*/samples.json")).read_text())  # next to the run, not in cwd
    assert record["num_samples"] == 4 and not (tmp_path / "samples").exists()


def test_a_run_saved_with_relative_paths_says_which_saved_value_is_missing(own_run, session_env, tmp_path):
    _, run, _ = own_run
    config = (run / "config.yaml").read_text().replace(str(run.parent.parent / "shards" / "mine"), "shards/mine")
    old = tmp_path / "old-run"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_text(config)  # as runs trained before paths were stored absolute
    shutil.copy(run / "checkpoints" / "last.ckpt", old / "checkpoints" / "last.ckpt")
    args = ["evaluate", "--ckpt_path", str(old / "checkpoints" / "last.ckpt"), "--no_wandb", "--num_samples", "4"]
    proc = run_cli(args, session_env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.init_args.shards = 'shards/mine', read from the config" in proc.stderr
    assert "write shards" not in proc.stderr  # the old message sent the user to write shards again


def test_two_evaluate_sweeps_of_one_checkpoint_coexist(own_run, session_env):
    _, run, _ = own_run
    base = ["evaluate", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--num_samples", "4", "--no_wandb"]
    base += ["--features", "random", "--no_progress", "--batch_size", "4"]
    for sampler in ("ddim", "euler"):
        proc = run_cli([*base, "--sampler", sampler, "--steps", "2"], session_env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    folders = sorted(p.name for p in (run / "eval").iterdir() if (p / "results.json").exists())
    assert [f for f in folders if "-ddim-2-" in f] and [f for f in folders if "-euler-2-" in f], folders
    again = run_cli([*base, "--sampler", "ddim", "--steps", "2"], session_env)  # the same evaluation is refused
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_validate_keeps_the_training_runs_wandb_folder_as_it_was(own_run, session_env):
    work, run, _ = own_run
    latest = (run / "wandb" / "latest-run").resolve()
    parts = sorted((run / "wandb").glob("offline-run-*"))
    args = ["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    proc = run_cli([*args, *QUICK], session_env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "wandb" / "latest-run").resolve() == latest and sorted((run / "wandb").glob("offline-run-*")) == parts
    validation = list((run / "validate" / "wandb").glob("offline-run-*"))
    assert len(validation) == 1
    out = proc.stdout + proc.stderr
    assert [text for text in NOISE if text in out] == []


def test_evaluate_without_sampler_options_uses_and_reports_the_models_own_budgets(session_env, tmp_path):
    ckpt = ROOT / "tests" / "fixtures" / "legacy" / "pyramid.ckpt"  # a 2-level pyramid: dpmpp_2m, 20 and 8 steps
    args = ["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "4", "--batch_size", "4", "--no_wandb"]
    proc = run_cli([*args, "--features", "random", "--no_progress", "--out", str(tmp_path)], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the model's own sampler dpmpp_2m/dpmpp_2m and steps 20/8 (per level, coarse first)" in proc.stderr
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row["sampler"] == "dpmpp_2m" and row["steps"] == [20, 8] and row["nfe"] == 28


def test_the_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*LIGHTNING_COMMANDS, *COMMANDS]:
        assert f"\n  {name} " in out, name
    assert "__main__" not in out
    proc = subprocess.run([sys.executable, "-m", "pyramid_dm", "fit", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m pyramid_dm")
    assert main(["fitt"]) == 2


def test_a_five_image_folder_shards_with_a_warning_and_fits(session_env, tmp_path):
    make_rgb_folder(tmp_path / "five", {"a": 2, "b": 2, "c": 1}, size=16)
    proc = run_cli(["shards", "folder", "five", "--out", "shards5", "--no-progress"], session_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: the val split holds 1 image(s) for 3 classes (train: 4)" in proc.stderr
    fit = ["fit", "--config", "configs/quickstart.yaml", "--data.init_args.shards", str(tmp_path / "shards5")]
    fit += ["--exp.root", str(tmp_path / "runs"), "--trainer.max_steps", "2", "--trainer.val_check_interval", "1"]
    proc = run_cli([*fit, *QUICK], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(["shards", "folder", "five", "--out", "none", "--val-fraction", "0"], session_env, cwd=tmp_path)
    assert "the val split is empty" in proc.stderr
    empty = [*fit[:3], "--data.init_args.shards", str(tmp_path / "none"), *fit[5:], "--exp.name", "empty", *QUICK]
    proc = run_cli(empty, session_env)
    assert proc.returncode == 2 and "has no validation images (its val split is empty)" in proc.stderr
    assert not (tmp_path / "runs" / "empty").exists()  # refused before a run directory or W&B run is made


def test_misleading_messages_now_name_the_real_problem(session_env, tmp_path):
    legacy = ROOT / "tests" / "fixtures" / "legacy"
    proc = run_cli(["sample", "--ckpt_path", str(legacy / "ae_kl.ckpt"), "--out", str(tmp_path / "s")], session_env)
    assert proc.returncode == 2 and "holds an autoencoder model" in proc.stderr and "`sample` needs" in proc.stderr
    base = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path)]
    proc = run_cli([*base, "--ckpt_path", str(legacy / "pyramid.ckpt")], session_env)
    assert proc.returncode == 2
    assert "holds a pyramid model" in proc.stderr and "not a pixel model as the config's PixelDiffusion" in proc.stderr
    proc = run_cli([*base, "--trainer.max_step", "5"], session_env)  # a typo, not a prefix of max_steps
    assert proc.returncode != 0 and "unrecognized arguments: --trainer.max_step" in proc.stderr
    proc = run_cli([*base, "--trainer.max_steps", "2", "--trainer.max_time", "00:00:10:00", *QUICK], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = tmp_path / "quickstart" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    timer = next(k for k in state["callbacks"] if k.startswith("Timer"))
    state["callbacks"][timer]["time_elapsed"]["train"] = 601.0
    torch.save(state, ckpt)  # as if the first run had used its ten minutes
    resume = [*base, "--trainer.max_steps", "4", "--trainer.max_time", "00:00:10:00", "--ckpt_path", "last", *QUICK]
    proc = run_cli(resume, session_env)
    assert proc.returncode == 2
    assert "--trainer.max_time 0:10:00: the run has already trained for 0:10:01 of it" in proc.stderr


def test_a_pyramid_size_error_names_the_config_value_that_set_the_size(session_env, tmp_path):
    make_rgb_folder(tmp_path / "big", {"a": 6, "b": 6}, size=64)
    assert (
        run_cli(["shards", "folder", str(tmp_path / "big"), "--out", str(tmp_path / "s64")], session_env).returncode
        == 0
    )
    args = ["fit", "--config", "configs/pyramid/fashion_mnist.yaml", "--data.init_args.shards", str(tmp_path / "s64")]
    proc = run_cli([*args, "--model.init_args.resolutions", "[16, 32, 64]", "--exp.root", str(tmp_path)], session_env)
    assert proc.returncode == 2
    assert "the image size 32 is data.init_args.resize; the shards" in proc.stderr and "hold 64px" in proc.stderr
    assert "shrinks the 64x64 images" in proc.stderr  # the reused config's resize is announced


def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_the_resume_repeats_no_step(session_env, tmp_path):
    base = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), *QUICK]
    base += ["--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyramid_dm", *base, "--trainer.max_steps", "400"],
        cwd=ROOT,
        env={**os.environ, **session_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = tmp_path / "quickstart" / "checkpoints" / "last.ckpt"
    try:
        for _ in range(HANG_GUARD_S * 10):
            if last.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-2000:]
    stopped = torch.load(last, weights_only=False)["global_step"]
    assert f"stopped at step {stopped}: saved {last}" in out and 4 <= stopped < 400
    resume = run_cli([*base, "--trainer.max_steps", str(stopped + 3), "--ckpt_path", "last"], session_env)
    assert resume.returncode == 0, resume.stderr[-2000:]
    parts = sorted((tmp_path / "quickstart" / "wandb").glob("offline-run-*"))
    trained = [[r["trainer/global_step"] for r in run_history(p) if "train/loss" in r] for p in parts]
    assert len(parts) == 2 and trained[1] == [stopped, stopped + 1, stopped + 2]  # steps stopped+1.. (0-based rows)
    assert max(Counter(trained[0] + trained[1]).values()) == 1  # no step logged twice


def test_a_latent_checkpoint_records_its_autoencoder_and_samples_without_the_file(tmp_path):
    from pyramid_dm.engine.load import engine_from_checkpoint
    from pyramid_dm.errors import UserError
    from pyramid_dm.models import LatentDiffusion

    legacy = ROOT / "tests" / "fixtures" / "legacy"
    shutil.copy(legacy / "ae_kl.ckpt", tmp_path / "ae.ckpt")
    ckpt = torch.load(legacy / "latent.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["autoencoder_ckpt"] = str(tmp_path / "ae.ckpt")
    torch.save(ckpt, tmp_path / "latent.ckpt")
    model = LatentDiffusion.load_from_checkpoint(tmp_path / "latent.ckpt", map_location="cpu")
    saved: dict = {}
    model.on_save_checkpoint(saved)  # what every checkpoint of a latent run now holds
    ae_hparams = torch.load(legacy / "ae_kl.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["pyramid_dm"]["first_stage"]["hparams"] == dict(ae_hparams)

    def draw(c):
        engine = engine_from_checkpoint(c, "latent.ckpt").eval()
        return engine.sample(3, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=4)

    before = draw(ckpt)
    (tmp_path / "ae.ckpt").unlink()  # the autoencoder's run was moved or deleted
    with pytest.raises(UserError, match="the value saved in its hyperparameters"):
        draw(ckpt)  # an old checkpoint needs the file, and says which saved value named it
    ckpt["pyramid_dm"]["first_stage"] = saved["pyramid_dm"]["first_stage"]
    assert torch.equal(draw(ckpt), before)


def test_pareto_plot_tick_labels_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    from pyramid_dm.eval.report import pareto_figure

    for seconds in ([0.0121, 0.0133, 0.0152, 0.0178], [0.002, 0.011, 0.05, 0.31], [1e-4, 1e-2, 1.0, 30.0]):
        rows = [
            {
                "sampler": "ddim",
                "steps": n,
                "nfe": n,
                "gflops_per_sample": n * 0.5,
                "seconds_per_sample": s,
                "fid": 9 - n,
            }
            for n, s in zip((2, 4, 6, 8), seconds)
        ]
        fig = pareto_figure(rows, "fid")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
            lo, hi = ax.get_xlim()
            shown = [t for t in labels if lo <= t.get_position()[0] <= hi]
            assert len(shown) >= 2, (seconds, [t.get_text() for t in labels])
            boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
            assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), (seconds, [t.get_text() for t in shown])
