"""Evaluation: FID/KID sanity on real data, the offline feature classifiers, the evaluate command (files, W&B
entries, bad input), the sample command and the analysis notebook (FLOP counting: test_cost.py)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import execute_notebook, run_cli, run_main, wandb_inspect
from PIL import Image

from pyramid_dm.data import Manifest
from pyramid_dm.data.datamodule import read_split
from pyramid_dm.errors import UserError
from pyramid_dm.eval import fid, kid, precision_recall
from pyramid_dm.eval.features import ClassifierFeatures, RandomFeatures, build_features, extract
from pyramid_dm.eval.real_features import real_features

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "pyramid_dm" / "eval" / "weights"


def images_of(manifest: Manifest, split: str, limit: int | None = None) -> torch.Tensor:
    return torch.cat([b[0] for b in read_split(manifest, split, limit)])


@pytest.fixture(scope="module")
def digits(digits_shards):
    manifest = Manifest.load(digits_shards)
    extractor = build_features("auto", manifest.name)
    return manifest, extractor, real_features(manifest, "train", extractor, progress=False)


def test_fid_of_a_set_against_itself_is_zero(digits):
    _, _, real = digits
    assert abs(fid(real, real)) < 1e-3
    assert fid(real, real[torch.randperm(len(real))]) < 1e-3


def test_fid_grows_monotonically_with_added_noise(digits):
    manifest, extractor, real = digits
    val = images_of(manifest, "val")
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(val.shape, generator=g)
    scores = [fid(real, extract(extractor, (val + s * noise).clamp(-1, 1))) for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > 10 * scores[0]


def test_kid_of_two_halves_of_the_same_data_is_zero_within_its_std(digits):
    _, _, real = digits
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    a, b = real[perm[: len(real) // 2]], real[perm[len(real) // 2 :]]
    mean, std = kid(a, b, subset_size=500)
    assert abs(mean) <= 2 * std, (mean, std)
    far_mean, far_std = kid(a, b + 0.5 * b.std(0))
    assert far_mean > 5 * far_std


def test_precision_recall_see_a_dropped_mode(digits):
    manifest, extractor, real = digits
    labels = torch.cat([b[1] for b in read_split(manifest, "train")])
    fake = real[labels < 5]  # a "generator" that never draws the digits 5..9
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95 and recall < 0.75


def test_real_features_are_cached_and_keyed_by_the_shard_checksums(digits, session_env):
    from pyramid_dm.eval.real_features import cache_key

    manifest, extractor, _ = digits
    first = real_features(manifest, "val", extractor, limit=100, progress=False)
    key = cache_key(manifest, "val", 8, 100, extractor)
    cached = Path(session_env["PYRAMID_DM_CACHE"]) / "real_features" / f"digits-val-digits_clf-{key}.pt"
    assert cached.is_file() and first.shape == (100, extractor.num_features)
    mtime = cached.stat().st_mtime_ns
    assert torch.equal(real_features(manifest, "val", extractor, limit=100, progress=False), first)
    assert cached.stat().st_mtime_ns == mtime  # read, not recomputed
    assert cache_key(manifest, "val", 8, 99, extractor) != key
    changed = Manifest.load(manifest.path)
    changed.data["splits"]["val"]["shards"][0]["sha256"] = "0" * 64  # as if the shards were rewritten
    assert cache_key(changed, "val", 8, 100, extractor) != key


def test_asking_for_more_real_images_than_the_split_holds_is_refused(digits):
    manifest, extractor, _ = digits
    with pytest.raises(UserError, match="holds only 180"):
        real_features(manifest, "val", extractor, limit=181, progress=False)


@pytest.mark.parametrize(
    "name,shards,floor", [("digits_clf", "builtin:digits", 0.97), ("fmnist_clf", "builtin:fashion_mnist", 0.85)]
)
def test_committed_classifier_reaches_its_stated_val_accuracy(name, shards, floor, session_env):
    from pyramid_dm.data.builtin import resolve_builtin

    features = ClassifierFeatures(WEIGHTS / f"{name}.pt")
    manifest = Manifest.load(resolve_builtin(shards))
    batches = list(read_split(manifest, "val"))
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    accuracy = features.net.accuracy(images, labels)
    assert accuracy >= floor
    assert accuracy == pytest.approx(features.meta["val_accuracy"], abs=2e-3)
    assert features.meta["dataset"] == manifest.name and "train-classifier" in features.meta["command"]


def test_train_classifier_command_writes_a_usable_extractor(session_env, tmp_path, digits_shards):
    out = tmp_path / "clf.pt"
    cmd = ["train-classifier", "--shards", str(digits_shards), "--name", "my_clf"]
    proc = run_cli([*cmd, "--out", str(out), "--epochs", "2", "--width", "8"], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    features = build_features(str(out))
    assert features.name == "my_clf" and features.meta["epochs"] == 2 and 0 < features.meta["val_accuracy"] <= 1
    assert extract(features, torch.zeros(3, 1, 8, 8)).shape == (3, 32)
    again = run_cli([*cmd, "--out", str(out)], session_env)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # the weights already written are kept


def test_missing_weights_and_unknown_extractors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("PYRAMID_DM_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(UserError, match="PYRAMID_DM_INCEPTION_WEIGHTS"):
        build_features("inception")
    with pytest.raises(UserError, match="train-classifier"):
        build_features(str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="digits_clf"):
        build_features("imagenet")
    assert isinstance(build_features("auto", "my_photos"), RandomFeatures)


# ---- the evaluate command, end to end ------------------------------------------------------------------------------


def run(args: list[str], env: dict):
    return run_cli(args, env)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, session_env, digits_shards) -> Path:
    root = tmp_path_factory.mktemp("runs")
    proc = run(
        [
            "fit",
            "--config",
            "configs/quickstart.yaml",
            "--exp.root",
            str(root),
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "4",
            "--data.init_args.num_workers",
            "0",
            "--trainer.enable_progress_bar",
            "false",
            *IN_TRAINING_EVAL,
        ],
        session_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "quickstart" / "checkpoints" / "last.ckpt"


IN_TRAINING_EVAL = [
    "--trainer.callbacks+=pyramid_dm.callbacks.SampleQuality",
    "--trainer.callbacks.every_n_steps=2",
    "--trainer.callbacks.num_samples=20",
    "--trainer.callbacks.batch_size=10",
    "--trainer.callbacks.steps=3",
    "--trainer.callbacks.metrics=[swd, spectrum]",
]


def test_in_training_sample_quality_is_logged_every_n_steps(checkpoint):
    from pyramid_dm.eval.history import run_history

    run_dir = next((checkpoint.parent.parent / "wandb").glob("offline-run-*"))
    history = run_history(run_dir, prefix="val/")
    rows = [r for r in history if "val/fid_digits_clf" in r]
    # after optimizer steps 2 and 4, at Lightning's logging step (1 and 3): where the last validation's val/loss is
    assert [r["trainer/global_step"] for r in rows] == [1, 3]
    assert [r["trainer/global_step"] for r in history if "val/loss" in r][-1] == 3
    assert all(r["val/digits_clf_num_samples"] == 20 and r["val/kid_digits_clf_std"] >= 0 for r in rows)
    assert all(r["val/swd_8"] > 0 and r["val/spectrum_8"] > 0 for r in rows)  # 8x8 digits: one level, one band


EVAL = [
    "--sampler",
    "ddim",
    "ddpm",
    "--steps",
    "2",
    "4",
    "--num_samples",
    "40",
    "--batch_size",
    "20",
    "--num_real",
    "300",
    "--kid_subset_size",
    "20",
    "--metrics",
    "swd",
    "spectrum",
    "--no_progress",
]


@pytest.fixture(scope="module")
def evaluated(checkpoint, session_env) -> Path:
    proc = run(["evaluate", "--ckpt_path", str(checkpoint), *EVAL], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (checkpoint.parent.parent / "eval").glob("last-step*-digits_clf-ddim+ddpm-2+4-n40-seed0-*")  # as run
    return folder


def test_evaluate_writes_table_plot_and_wandb_entries(evaluated):
    result = json.loads((evaluated / "results.json").read_text())
    rows, meta = result["rows"], result["meta"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("ddim", 4), ("ddpm", 2), ("ddpm", 4)]
    for r in rows:
        assert r["nfe"] == r["steps"] and r["num_samples"] == 40 and r["num_real"] == 300
        assert r["gflops_per_sample"] == pytest.approx(r["nfe"] * r["gflops_per_call"] + r["decoder_gflops"])
        assert r["fid_digits_clf"] > 0 and r["seconds_per_sample"] > 0 and r["params"] > 0
        assert r["swd_8"] == r["swd_mean"] > 0 and r["spectrum_8"] == r["spectrum_mean"] > 0
    assert rows[1]["gflops_per_sample"] == pytest.approx(2 * rows[0]["gflops_per_sample"])
    assert meta["features"] == "digits_clf" and meta["real_split"] == "train" and meta["dataset"] == "digits"
    with (evaluated / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and float(table[0]["fid_digits_clf"]) == pytest.approx(rows[0]["fid_digits_clf"])
    assert (evaluated / "pareto-swd_mean.png").is_file() and (evaluated / "pareto-spectrum_mean.png").is_file()
    png = (evaluated / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 500
    runs = list((evaluated / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and meta["wandb_run_id"] in runs[0].name
    rec = wandb_inspect(runs[0])
    summary = rec["summary"]
    assert summary["eval/results"]["_type"] == "table-file" and summary["eval/results"]["nrows"] == 4
    assert summary["eval/pareto"]["_type"] == "image-file"
    assert summary["ddpm-4/fid_digits_clf"] == pytest.approx(rows[3]["fid_digits_clf"])
    assert rec["config"]["ckpt_path"].endswith("last.ckpt")


def test_evaluate_refuses_to_overwrite_results(evaluated, checkpoint, session_env):
    before = (evaluated / "results.json").read_bytes()
    proc = run(["evaluate", "--ckpt_path", str(checkpoint), *EVAL], session_env)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (evaluated / "results.json").read_bytes() == before


def test_evaluate_bad_input_is_named(checkpoint, session_env, tmp_path, monkeypatch, capsys):
    def run(args, env):  # in this process: the refusals come before any sampling (helpers.run_main)
        code, err = run_main(args, env, monkeypatch, capsys)
        return SimpleNamespace(returncode=code, stderr=err)

    too_many = run(
        [
            "evaluate",
            "--ckpt_path",
            str(checkpoint),
            "--real_split",
            "val",
            "--num_real",
            "500",
            "--out",
            str(tmp_path / "a"),
            "--no_wandb",
        ],
        session_env,
    )
    assert too_many.returncode == 2 and "holds only 180" in too_many.stderr
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["pyramid_dm"] == {
        "family": "pixel",
        "class_path": "pyramid_dm.models.diffusion.PixelDiffusion",
        "level_shapes": [[1, 8, 8]],
        "first_stage": None,  # the identity needs nothing besides its options
    }
    ckpt["pyramid_dm"]["family"] = "latent"
    torch.save(ckpt, tmp_path / "latent.ckpt")
    wrong = run(
        [
            "evaluate",
            "--ckpt_path",
            str(tmp_path / "latent.ckpt"),
            "--config",
            "configs/quickstart.yaml",
            "--out",
            str(tmp_path / "b"),
        ],
        session_env,
    )
    assert wrong.returncode == 2 and "latent diffusion checkpoint" in wrong.stderr and "PixelDiffusion" in wrong.stderr
    not_a_model = run(
        ["evaluate", "--ckpt_path", str(WEIGHTS / "digits_clf.pt"), "--config", "configs/quickstart.yaml"], session_env
    )
    assert not_a_model.returncode == 2 and "not a pyramid_dm training checkpoint" in not_a_model.stderr
    inception = run(
        [
            "evaluate",
            "--ckpt_path",
            str(checkpoint),
            "--features",
            f"inception:{tmp_path}/none.pth",
            "--out",
            str(tmp_path / "c"),
        ],
        session_env,
    )
    assert inception.returncode == 2 and "Inception weights" in inception.stderr
    bad_sampler = run(["evaluate", "--ckpt_path", str(checkpoint), "--sampler", "dpm_magic"], session_env)
    assert bad_sampler.returncode == 2 and "dpm_magic" in bad_sampler.stderr
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing half-written


def test_notebook_executes_on_the_table_and_training_run(evaluated, checkpoint, session_env):
    training_run = next((checkpoint.parent.parent / "wandb").glob("offline-run-*"))
    env = {
        **session_env,
        "PYRAMID_DM_EVAL_TABLE": str(evaluated / "results.csv"),
        "PYRAMID_DM_WANDB_RUN": str(training_run),
    }
    nb = execute_notebook("evaluation.ipynb", env)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "4 rows from" in text and "fid_digits_clf" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1


# ---- the sample command ---------------------------------------------------------------------------------------------
SAMPLE = ["--sampler", "dpmpp_2m", "--steps", "3", "--guidance", "2.0", "--num_samples", "6", "--batch_size", "4"]


def test_sample_writes_pngs_grid_and_json_and_reproduces_them(checkpoint, session_env, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for out, seed in zip(outs, ["0", "0", "1"]):
        proc = run(["sample", "--ckpt_path", str(checkpoint), *SAMPLE, "--seed", seed, "--out", str(out)], session_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((outs[0] / "samples.json").read_text())
    assert record["nfe"] == 6  # 3 steps x 2 calls (conditional + unconditional)
    assert (record["sampler"], record["steps"], record["guidance"], record["seed"]) == ("dpmpp_2m", 3, 2.0, 0)
    assert record["discretization"] == "logsnr" and record["labels"] == [0, 1, 2, 3, 4, 5]
    assert record["wall_seconds"] > 0 and record["global_step"] == 4
    pngs = sorted(p.name for p in outs[0].glob("0*.png"))
    assert pngs == [f"{i:06d}.png" for i in range(6)] and (outs[0] / "grid.png").is_file()
    assert Image.open(outs[0] / "000000.png").size == (8, 8)
    same = all((outs[0] / n).read_bytes() == (outs[1] / n).read_bytes() for n in pngs)
    other = any((outs[0] / n).read_bytes() != (outs[2] / n).read_bytes() for n in pngs)
    assert same and other


def test_sample_bad_input_is_named(checkpoint, session_env, tmp_path):
    (tmp_path / "samples.json").write_text("{}")
    cases = [
        (["--out", str(tmp_path)], "already holds samples.json"),
        (["--out", str(tmp_path / "x"), "--labels", "3", "12"], "--labels [12] out of range"),
        (["--out", str(tmp_path / "x"), "--option", "eta"], "is not KEY=VALUE"),
    ]
    for extra, message in cases:
        proc = run(["sample", "--ckpt_path", str(checkpoint), *SAMPLE, *extra], session_env)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "x").exists() and (tmp_path / "samples.json").read_text() == "{}"


def test_evaluate_takes_nfe_budgets(checkpoint, session_env, tmp_path):
    args = ["--sampler", "heun", "dpmpp_2m", "--nfe", "5", "--num_samples", "20", "--batch_size", "20"]
    args += ["--num_real", "100", "--kid_subset_size", "10", "--no_progress", "--no_wandb", "--out", str(tmp_path)]
    proc = run(["evaluate", "--ckpt_path", str(checkpoint), *args], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [("heun", 3, 5), ("dpmpp_2m", 5, 5)]
    assert [r["discretization"] for r in rows] == ["karras", "logsnr"] and rows[0]["guidance"] == 1.0
