"""Classifier guidance end to end: a noise-conditional classifier trained with ``fit`` (its own LightningModule and
config), then ``sample`` and ``evaluate`` with it and with the score-based samplers (ALD, PC, Euler-Maruyama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_cli

CLEAN_ACCURACY_FLOOR = 0.85  # 200 steps on the 8x8 digits val split; about 0.95 measured


def fit(args: list[str], env: dict, root: Path):
    common = ["--exp.root", str(root), "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    proc = run_cli(["fit", *args, *common], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, session_env, digits_shards) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    fit(["--config", "configs/quickstart.yaml", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4"],
        session_env, root)  # fmt: skip
    fit(["--config", "configs/classifier/digits.yaml", "--trainer.max_steps", "200",
         "--trainer.val_check_interval", "100"], session_env, root)  # fmt: skip
    return {
        "model": root / "quickstart" / "checkpoints" / "last.ckpt",
        "classifier": root / "clf-digits" / "checkpoints" / "last.ckpt",
    }


def test_classifier_trains_with_fit_and_logs_accuracy_per_noise_level(runs):
    from pyramid_dm.eval.history import run_history

    run_dir = next((runs["classifier"].parent.parent / "wandb").glob("offline-run-*"))
    val = [r for r in run_history(run_dir, prefix="val/") if "val/acc_clean" in r]
    assert len(val) == 2  # validated at steps 100 and 200
    last = val[-1]
    assert last["val/acc_clean"] >= CLEAN_ACCURACY_FLOOR, last
    bins = [last[k] for k in sorted(k for k in last if k.startswith("val/acc_t"))]
    assert len(bins) == 4 and bins[0] > bins[-1]  # noisier inputs are harder to classify
    ckpt = torch.load(runs["classifier"], map_location="cpu", weights_only=True)
    st = ckpt["pyramid_dm"]
    assert st["family"] == "classifier" and st["data"]["dataset"] == "digits"
    assert st["image_shape"] == [1, 8, 8] and st["num_classes"] == 10 and st["schedule"] == "cosine"
    assert not any(k.startswith("classifier.") for k in ckpt["state_dict"])  # the network's weights, once


def test_sample_with_classifier_guidance_and_score_samplers(runs, session_env, tmp_path):
    base = ["sample", "--ckpt_path", str(runs["model"]), "--num_samples", "6", "--batch_size", "6"]
    clf = ["--classifier", str(runs["classifier"]), "--classifier_scale", "2"]
    cases = {
        "pc": (["--sampler", "pc", "--steps", "4", "--option", "corrector_steps=2", *clf], 12, 12),
        "ald": (["--sampler", "ald", "--steps", "3", "--option", "n_steps_each=2"], 7, 0),
        "em": (["--sampler", "euler_maruyama", "--steps", "5", *clf], 5, 5),
        "ddim": (["--sampler", "ddim", "--steps", "4", *clf, "--labels", "3"], 4, 4),
    }
    for name, (extra, nfe, calls) in cases.items():
        proc = run_cli([*base, *extra, "--out", str(tmp_path / name)], session_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        record = json.loads((tmp_path / name / "samples.json").read_text())
        assert record["nfe"] == nfe and record["classifier_calls"] == calls, record
        assert len(list((tmp_path / name).glob("0*.png"))) == 6
    assert record["labels"] == [3] * 6 and record["classifier_scale"] == 2.0
    # scale 0 draws exactly the unguided samples
    for name, extra in [("s0", [*clf[:2], "--classifier_scale", "0"]), ("plain", [])]:
        proc = run_cli([*base, "--sampler", "ddim", "--steps", "3", *extra, "--out", str(tmp_path / name)], session_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "s0" / "grid.png").read_bytes() == (tmp_path / "plain" / "grid.png").read_bytes()


def test_evaluate_counts_the_classifier_cost(runs, session_env, tmp_path):
    args = ["evaluate", "--ckpt_path", str(runs["model"]), "--sampler", "pc", "--nfe", "8", "--option", "snr=0.1"]
    args += ["--classifier", str(runs["classifier"]), "--classifier_scale", "1.5", "--num_samples", "20"]
    args += ["--batch_size", "10", "--num_real", "100", "--kid_subset_size", "10", "--no_progress", "--no_wandb"]
    proc = run_cli([*args, "--out", str(tmp_path)], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert (row["steps"], row["nfe"], row["classifier_calls"], row["snr"]) == (4, 8, 8, 0.1)
    assert row["classifier_scale"] == 1.5 and row["classifier_gflops_per_call"] > 0
    network = row["nfe"] * row["gflops_per_call"] + row["decoder_gflops"]
    assert row["gflops_per_sample"] == pytest.approx(network + 8 * row["classifier_gflops_per_call"])
    assert {"precision_digits_clf", "recall_digits_clf", "fid_digits_clf"} <= set(row)


def _edited(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_bad_guidance_and_sampler_settings_are_named(runs, session_env, tmp_path, monkeypatch, capsys):
    def other_data(ckpt):
        ckpt["pyramid_dm"]["data"]["dataset"] = "fashion_mnist"

    def other_classes(ckpt):
        ckpt["hyper_parameters"]["num_classes"] = 5
        ckpt["pyramid_dm"]["num_classes"] = 5
        for key in ("net.head.weight", "net.head.bias"):
            ckpt["state_dict"][key] = ckpt["state_dict"][key][:5]

    def other_size(ckpt):
        ckpt["hyper_parameters"]["image_size"] = 16

    data = _edited(runs["classifier"], tmp_path / "data.ckpt", other_data)
    classes = _edited(runs["classifier"], tmp_path / "classes.ckpt", other_classes)
    size = _edited(runs["classifier"], tmp_path / "size.ckpt", other_size)
    pyramid = Path(__file__).parent / "fixtures" / "legacy" / "pyramid.ckpt"
    ncsn = Path(__file__).parent / "fixtures" / "legacy" / "ncsn.ckpt"  # the ve schedule; the classifier: cosine
    base = ["--sampler", "ddim", "--steps", "2", "--num_samples", "2", "--out", str(tmp_path / "never")]
    cases = [
        (runs["model"], ["--classifier", str(data)], "was trained on 'fashion_mnist' but the model on 'digits'"),
        (runs["model"], ["--classifier", str(classes)], "knows 5 classes but the model 10"),
        (runs["model"], ["--classifier", str(size)], "reads images of shape (1, 16, 16) (C, H, W) but the model"),
        (runs["model"], ["--classifier", str(runs["model"])], "holds a pixel model"),
        (pyramid, ["--classifier", str(runs["classifier"])], "needs a single-level pixel model"),
        (ncsn, ["--classifier", str(runs["classifier"])], "or pass --classifier_any_schedule to guide it anyway"),
        (runs["model"], ["--classifier", str(runs["classifier"]), "--classifier_scale", "-1"], "must be >= 0"),
        (runs["model"], ["--classifier_scale", "3"], "--classifier_scale needs --classifier"),
        (runs["model"], ["--guidance", "-1"], "guidance scale must be >= 0"),
        (runs["model"], ["--sampler", "ald", "--option", "step_size=1"], "step_size 1 is outside its valid range"),
        (runs["model"], ["--sampler", "pc", "--option", "snr=2"], "snr 2 is outside its valid range (0, 1]"),
    ]
    from pyramid_dm.cli import main

    for key, value in session_env.items():  # in this process (the command's own code path, without a new
        monkeypatch.setenv(key, value)  # interpreter per case: the refusals all come before any sampling)
    for ckpt, extra, message in cases:
        code = main(["sample", "--ckpt_path", str(ckpt), *base, *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (extra, err[-2000:])
    anyway = ["--classifier", str(runs["classifier"]), "--classifier_any_schedule", "--out", str(tmp_path / "ncsn")]
    proc = run_cli(["sample", "--ckpt_path", str(ncsn), *base[:-2], *anyway], session_env)
    assert proc.returncode == 0 and "warning: --classifier" in proc.stderr, proc.stderr[-2000:]
    ev = ["evaluate", "--ckpt_path", str(runs["model"]), "--sampler", "pc", "--steps", "3", "--option", "snr=0"]
    proc = run_cli([*ev, "--no_wandb", "--out", str(tmp_path / "never")], session_env)
    assert proc.returncode == 2 and "snr 0 is outside its valid range" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "never").exists()
    root = tmp_path / "runs"
    proc = run_cli(["fit", "--config", "configs/quickstart.yaml", "--model.init_args.schedule", "ve",
                    "--model.init_args.zero_terminal_snr", "true", "--exp.root", str(root)], session_env)  # fmt: skip
    assert proc.returncode == 2 and "zero_terminal_snr would put it at infinity" in proc.stderr, proc.stderr[-2000:]
    assert not root.exists()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_the_own_data_classifier_is_trained_at_the_own_models_shifted_noise_levels(size, digits_shards, monkeypatch):
    """configs/own/classifier_<s>.yaml noises at the schedule of configs/own/pixel_<s>.yaml, resolution shift included,
    so that the guidance's schedule check passes and the classifier reads the levels it was trained on."""
    from pyramid_dm.cli import expand_defaults, make_cli

    monkeypatch.setattr("sys.argv", ["pyramid_dm"])
    schedules = []
    for name in ("classifier", "pixel"):
        args = expand_defaults(["--config", str(ROOT / f"configs/own/{name}_{size}.yaml")])
        args += ["--data.init_args.shards", str(digits_shards)]
        model = make_cli(subcommands=False, run=False, args=args).model
        schedules.append(model.schedule if name == "classifier" else model.engine.schedules[0])
    assert schedules[0].name == schedules[1].name
    assert ("+shift" in schedules[0].name) == (size != 32)
    t = torch.linspace(0.05, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(schedules[0].sigma(t), schedules[1].sigma(t))
