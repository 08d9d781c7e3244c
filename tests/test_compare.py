"""Training compute as an axis (cumulative training FLOPs in the logs and in every checkpoint, a FLOPs budget that
ends a run) and ``compare``: configurations x training seeds x sampling seeds, both spreads, the two fronts."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
import torch
from helpers import fit_run, run_cli, run_main, wandb_inspect

from pyramid_dm.commands.compare import pick_checkpoint, spreads

CONFIG = "configs/quickstart.yaml"


def cost(run) -> tuple[dict, int]:
    """The newest ``last`` checkpoint's record and step (a run copied from another folder saves ``last-v1``)."""
    path = max((run / "checkpoints").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["training_cost"], ckpt["global_step"]


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory, session_env, digits_shards):
    """Two quickstart runs (training seeds 0 and 1) ended by a training-FLOPs budget, then the first resumed with a
    larger one."""
    root = tmp_path_factory.mktemp("compare")
    runs = {}
    for seed in (0, 1):
        extra = ["--exp.name", f"quick-seed{seed}", "--seed_everything", str(seed), "--exp.max_train_flops", "4e10"]
        extra += ["--trainer.log_every_n_steps", "1"]
        fit_run(CONFIG, root, session_env, 50, *extra)
        runs[seed] = root / f"quick-seed{seed}"
    first, step = cost(runs[0])
    proc = run_cli(
        ["fit", "--config", CONFIG, "--exp.root", str(root), "--exp.name", "quick-seed0", "--ckpt_path", "last"]
        + [
            "--exp.max_train_flops",
            "8e10",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.log_every_n_steps",
            "1",
        ]
        + ["--data.init_args.num_workers", "0", "--seed_everything", "0"],
        session_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, runs, first, step


def test_a_flops_budget_ends_the_run_and_every_checkpoint_records_its_cost(budget_runs, session_env):
    root, runs, first, step = budget_runs
    per_step = first["flops"] / step
    assert step == math.ceil(4e10 / per_step) < 50  # the budget, not max_steps, ended it
    assert first["images"] == step * 128  # the quickstart's batch, one rank
    resumed, step2 = cost(runs[0])
    assert step2 == math.ceil(8e10 / per_step)
    assert resumed["flops"] == pytest.approx(step2 * per_step) and resumed["images"] == step2 * 128
    # the logs carry it too: the W&B run (resumed: one run) ends at the checkpoint's count
    summary = wandb_inspect(sorted((runs[0] / "wandb").glob("offline-run-*"))[-1])["summary"]  # the resumed part
    assert summary["train/flops"] == pytest.approx(resumed["flops"]) and summary["train/images"] == step2 * 128


def test_a_checkpoint_without_a_cost_record_is_counted_from_its_step(budget_runs, session_env, tmp_path):
    root, runs, first, step = budget_runs
    run = tmp_path / "old-seed0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(runs[1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    del ckpt["training_cost"]
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if k != "TrainingCost"}
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    proc = run_cli(
        ["fit", "--config", CONFIG, "--exp.root", str(tmp_path), "--exp.name", "old-seed0", "--ckpt_path", "last"]
        + ["--trainer.max_steps", str(step + 1), "--trainer.enable_progress_bar", "false"]
        + ["--data.init_args.num_workers", "0"],
        session_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has no training_cost record" in proc.stderr
    record, now = cost(run)
    assert now == step + 1 and record["flops"] == pytest.approx(now * first["flops"] / step)


def test_pick_checkpoint_takes_the_one_nearest_the_budget(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name, flops, step in [("a", 1e12, 10), ("b", 2.1e12, 20), ("c", 3e12, 30), ("last", 3e12, 30)]:
        torch.save(
            {"global_step": step, "training_cost": {"flops": flops, "images": step, "step": step}},
            folder / f"{name}.ckpt",
        )
    assert pick_checkpoint(tmp_path / "run", 2e12)[0].name == "b.ckpt"
    assert pick_checkpoint(tmp_path / "run", 1.4e12)[0].name == "a.ckpt"
    assert pick_checkpoint(tmp_path / "run", None)[0].name == "last.ckpt"
    torch.save({"global_step": 5}, folder / "a.ckpt")  # no record: not a candidate
    assert pick_checkpoint(tmp_path / "run", 1e12)[0].name == "b.ckpt"


def test_spreads_are_the_sampling_range_and_the_range_of_training_means():
    assert spreads({0: [1.0, 1.4], 1: [2.0, 2.1]}) == pytest.approx((0.4, 0.85))
    sampling, training = spreads({0: [1.0, 1.2]})
    assert sampling == pytest.approx(0.2) and training is None  # one training seed: no training spread to give


def test_compare_reports_both_spreads_and_the_fronts(budget_runs, session_env, monkeypatch, capsys):
    root, runs, first, step = budget_runs
    out = root / "cmp"
    args = [
        "compare",
        str(runs[0]),
        str(runs[1]),
        "--out",
        str(out),
        "--train_flops",
        "4e10",
        "--sampling_seeds",
        "0",
        "1",
    ]
    args += ["--", "--steps", "4", "--num_samples", "60", "--batch_size", "60", "--no_wandb", "--no_progress"]
    code, err = run_main(args + ["--metrics", "swd", "spectrum"], session_env, monkeypatch, capsys)
    assert code == 0, err
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert {(r["training_seed"], r["sampling_seed"]) for r in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert {r["configuration"] for r in rows} == {"quick"}
    # seed 0 was resumed past the budget: its checkpoint nearest 4e10 is still the one it has (last), at 8e10
    flops = {r["training_seed"]: r["train_flops"] for r in rows}
    assert flops[1] == pytest.approx(first["flops"]) and flops[0] > flops[1]
    quality = next(k for k in rows[0] if k.startswith("fid_"))
    per_seed = {t: [r[quality] for r in rows if r["training_seed"] == t] for t in (0, 1)}
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 1
    entry = summary[0]
    sampling = max(max(v) - min(v) for v in per_seed.values())
    training = abs(statistics.mean(per_seed[0]) - statistics.mean(per_seed[1]))
    assert float(entry[f"{quality}_sampling_spread"]) == pytest.approx(sampling)
    assert float(entry[f"{quality}_training_spread"]) == pytest.approx(training)
    assert float(entry[f"{quality}_noise"]) == pytest.approx(max(sampling, training))
    assert float(entry["swd_mean"]) > 0 and float(entry["spectrum_mean"]) > 0
    text = (out / "summary.md").read_text()
    assert "(sampling, training spread)" in text and "larger noise" in text
    assert (out / "fronts.png").stat().st_size > 1000
    # a second compare reuses the evaluations (nothing sampled again) and gives the same table
    before = (out / "quick-seed0-sample0" / "results.json").stat().st_mtime_ns
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code == 0, err
    assert (out / "quick-seed0-sample0" / "results.json").stat().st_mtime_ns == before


def test_compare_refuses_what_it_sets_itself(tmp_path, session_env, monkeypatch, capsys):
    code, err = run_main(
        ["compare", str(tmp_path), "--out", str(tmp_path / "o"), "--", "--seed", "3"], session_env, monkeypatch, capsys
    )
    assert code != 0 and "compare sets evaluate's --seed itself" in err


def test_coarse_first_sampling_runs_the_coarse_part_small_and_carries_it_up(budget_runs):
    """A single-scale model sampled coarse first: the coarse calls at a quarter of the pixels (a quarter of the
    FLOPs), the fine calls the grid's remaining steps, and with only the last fine step left the image is the
    upsampled coarse one (2x2 blocks nearly flat): the coarse sample is what the fine steps start from."""
    from pyramid_dm.engine.coarse_first import coarse_first_sample
    from pyramid_dm.engine.load import build_model, load_checkpoint
    from pyramid_dm.errors import UserError

    root, runs, first, step = budget_runs
    path = runs[1] / "checkpoints" / "last.ckpt"
    engine = build_model(load_checkpoint(path), str(path), None, torch.device("cpu"), command="test")
    labels = torch.arange(16) % 10
    run = lambda start, seed=0: coarse_first_sample(  # noqa: E731
        engine, 16, 10, start, 4, labels=labels, generator=torch.Generator().manual_seed(seed)
    )
    images, cost = run(5)
    assert images.shape == (16, 1, 8, 8) and images.abs().max() <= 1
    assert (cost.coarse_calls, cost.fine_calls) == (4, 5)
    assert 0.2 < cost.coarse_flops / cost.fine_flops < 0.3
    assert cost.flops_per_sample == pytest.approx(4 * cost.coarse_flops + 5 * cost.fine_flops)
    assert torch.equal(run(5)[0], images) and not torch.equal(run(5, seed=1)[0], images)
    late, _ = run(9)  # only the last (least noisy) fine step: the upsampled coarse image shows through
    blocks = late.unfold(2, 2, 2).unfold(3, 2, 2).reshape(16, 1, 4, 4, 4)
    within, across = blocks.var(dim=-1).mean(), blocks.mean(dim=-1).var()
    early, _ = run(1)
    blocks_early = early.unfold(2, 2, 2).unfold(3, 2, 2).reshape(16, 1, 4, 4, 4)
    assert within < 0.5 * blocks_early.var(dim=-1).mean() and within < across
    with pytest.raises(UserError, match="factor 3: it must be >= 2 and divide the image size 8x8"):
        coarse_first_sample(engine, 2, 10, 5, 4, factor=3)


@pytest.mark.parametrize("command", ["evaluate", "sample", "compare", "search-steps", "train-classifier"])
def test_help_shows_the_defaults(command, capsys):
    from pyramid_dm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "(default: " in capsys.readouterr().out  # evaluate: --num_samples (default: 1000)


def test_default_output_folders_are_named_by_the_checkpoints_step():
    """``last.ckpt`` after a resume is another checkpoint: its default sample/evaluate folder is another folder."""
    from pyramid_dm.commands.args import checkpoint_label

    assert checkpoint_label("runs/x/checkpoints/last.ckpt", 45) == "last-step45"
    assert checkpoint_label("runs/x/checkpoints/last.ckpt", 30) != checkpoint_label("last.ckpt", 45)
    assert checkpoint_label("best-step739.ckpt", 739) == "best-step739"
    assert checkpoint_label("mine.ckpt", None) == "mine"


def test_plain_progress_lines_for_output_that_is_not_a_terminal():
    """First step, then every every_s seconds (none in between), and the last step, with the share, rate and ETA."""
    import io
    from types import SimpleNamespace

    from pyramid_dm.callbacks.progress import PlainProgress

    out = io.StringIO()
    bar = PlainProgress(every_s=3600, stream=out)
    trainer = SimpleNamespace(global_step=0, max_steps=10, is_global_zero=True, callback_metrics={})
    bar.on_train_start(trainer, None)
    for step in range(1, 11):
        trainer.global_step = step
        trainer.callback_metrics = {"train/loss": torch.tensor(1.0 / step)}
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 1/10 (10%)") and lines[1].startswith("step 10/10 (100%)")
    assert "train/loss 0.1000" in lines[1] and "ETA 0:00:00" in lines[1] and "steps/s" in lines[0]


def test_options_take_dashes_or_underscores(tmp_path, session_env, monkeypatch, capsys):
    """``--num-samples`` reaches evaluate's ``--num_samples`` (its check names it); ``--val_count`` reaches shards'
    ``--val-count``."""
    code, err = run_main(["evaluate", "--ckpt_path", "x.ckpt", "--num-samples", "1"], session_env, monkeypatch, capsys)
    assert code != 0 and "--num_samples must be >= 2, got 1" in err
    out = tmp_path / "p"
    args = [
        "shards",
        "photos",
        "--size",
        "16",
        "--count",
        "10",
        "--val_count",
        "10",
        "--out",
        str(out),
        "--no_progress",
    ]
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["splits"]["val"]["count"] == 10
