"""W&B views as code: every panel key of every view is found in the history (or summary) of a real offline run of
that kind, each key family gets its best-of summary from ``define_metric``, and each view builds into a
``wandb_workspaces`` workspace offline (saving needs W&B online, and is refused clearly here)."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli, run_main

from pyramid_dm.commands.views import logged_keys, wandb_run_dir, workspace
from pyramid_dm.views import VIEWS, missing_keys

QUALITY = [
    "--trainer.callbacks+=pyramid_dm.callbacks.SampleQuality",
    "--trainer.callbacks.every_n_steps=6",
    "--trainer.callbacks.num_samples=20",
    "--trainer.callbacks.batch_size=10",
    "--trainer.callbacks.steps=2",
]
FAST = [
    "--trainer.enable_progress_bar",
    "false",
    "--data.init_args.num_workers",
    "0",
    "--trainer.log_every_n_steps",
    "1",
]
# which real run each view is checked against (a training view against every training kind it applies to)
CHECKED = {"run": ["pyramid", "step_aware"], "pyramid": ["pyramid"], "step_aware": ["step_aware"],
           "sweep": ["step_aware", "pyramid"], "search": ["search"]}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory, session_env) -> dict:
    """Offline W&B runs of each kind: a pyramid, a step-aware supernet (6 steps each, validated with sample quality at
    step 6: throughput needs its 5-batch window) and a search-steps study of the supernet."""
    root = tmp_path_factory.mktemp("views")
    common = ["--exp.root", str(root), "--trainer.max_steps", "6", "--trainer.val_check_interval", "6", *FAST]
    for name, config, extra in (
        ("pyramid", "configs/pyramid/digits.yaml", []),
        ("step_aware", "configs/quickstart.yaml", ["--model.init_args.step_aware", "{widths: [1.0, 0.5]}"]),
    ):
        proc = run_cli(["fit", "--config", config, "--exp.name", name, *common, *extra, *QUALITY], session_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = root / "step_aware" / "checkpoints" / "last.ckpt"
    search = ["search-steps", "--ckpt_path", str(ckpt), "--steps", "3", "--trials", "3", "--population", "2"]
    search += ["--num_samples", "20", "--num_real", "50", "--study", str(root / "study"), "--no_progress"]
    proc = run_cli(search, session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"pyramid": root / "pyramid", "step_aware": root / "step_aware", "search": root / "study"}


@pytest.fixture(scope="module")
def keys(runs) -> dict:
    """(history keys, summary keys) of each run, read once."""
    return {kind: logged_keys(path) for kind, path in runs.items()}


def test_every_panel_key_is_logged_by_a_real_run_of_its_kind(keys):
    assert set(CHECKED) == set(VIEWS)
    for view, kinds in CHECKED.items():
        for kind in kinds:
            assert missing_keys(VIEWS[view], *keys[kind]) == [], (view, kind)


def test_a_renamed_metric_or_a_run_of_another_kind_breaks_the_check(runs, keys, session_env, monkeypatch, capsys):
    history, summary = keys["step_aware"]
    renamed = {k.replace("val/loss", "val/nll") for k in history}
    assert "Losses / loss: val/loss" in missing_keys(VIEWS["run"], renamed, summary)
    code, err = run_main(
        ["views", "check", "pyramid", "--run", str(runs["step_aware"])], session_env, monkeypatch, capsys
    )
    assert code == 2 and "train/loss_level*" in err and "samples/coarse_to_fine" in err


def test_define_metric_keeps_the_best_and_the_last_value(keys):
    _, summary = keys["step_aware"]
    assert {"val/loss.min", "val/loss.last", "val/fid_digits_clf.min", "val/precision_digits_clf.max"} <= summary
    assert "val/loss_w0.5.min" in summary and "train/loss.min" not in summary  # training losses: the last value
    _, summary = keys["search"]
    assert "trial/fid.min" in summary


def test_each_view_builds_a_workspace_naming_the_runs_keys(keys):
    for view, kinds in CHECKED.items():
        spec = workspace(VIEWS[view], "me", "pyramid_dm", f"pyramid_dm {view}", keys[kinds[0]])
        text = json.dumps(spec._to_model().model_dump(mode="json"))  # the payload save() would upload
        expected = {
            "run": ["val/fid_digits_clf", "train/device/samples_per_sec"],
            "pyramid": ["train/loss_level1", "samples/coarse_to_fine", "samples/level0"],
            "step_aware": ["train/loss_w0.5", "val/loss_w0.5"],
            "sweep": ["val/fid_digits_clf.min", "train/flops", '"grouping": [{"section": "run", "name": "group"}]'],
            "search": ["trial/gflops_per_sample", "search/pareto"],
        }[view]
        assert all(key in text for key in expected), (view, expected)


def test_views_cli_lists_and_refuses_to_apply_offline(runs, session_env, monkeypatch, capsys):
    code, _ = run_main(["views", "list"], session_env, monkeypatch, capsys)
    assert code == 0
    code, err = run_main(["views", "check", "pyramid", "--run", str(runs["pyramid"])], session_env, monkeypatch, capsys)
    assert code == 0 and not err
    args = ["views", "apply", "sweep", "--entity", "me", "--project", "p", "--run", str(runs["pyramid"])]
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code == 2 and "wandb login" in err
    assert wandb_run_dir(runs["pyramid"]).name.startswith("offline-run-")


def test_views_list_names_every_view_and_panel(capsys):
    from pyramid_dm.commands.views import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in VIEWS) and "train/loss_level*" in out and "trial/fid" in out
