"""Hardening, round two (issue 26): each case a hostile user or a flaky cluster found, by its behaviour and message."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyramid_dm.engine.step_policy import StepPolicy
from pyramid_dm.errors import UserError
from pyramid_dm.models import PyramidDiffusion

TINY_UNET = dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], norm_groups=4)


# ---- 6. non-finite numbers in policies and configs ------------------------------------------------------------------
def test_a_nan_breakpoint_in_a_policy_file_is_refused(tmp_path):
    path = tmp_path / "p.json"
    policy = StepPolicy.uniform(0.5).as_dict()
    policy["levels"] = [{"breakpoints": [math.nan], "widths": [0.5, 1.0], "step_widths": None}]
    path.write_text(json.dumps(policy))  # Python's json writes NaN, and reads it back
    with pytest.raises(ValueError, match=r"p.json.*breakpoints must be finite numbers"):
        StepPolicy.load(path)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_stage_bounds_are_refused(bad):
    with pytest.raises(UserError, match="stage bounds must be finite numbers"):
        PyramidDiffusion(8, 1, resolutions=[2, 4, 8], layout="pyramid_flow", schedule="flow", prediction="flow",
                         num_timesteps=0, stage_bounds=[1.0, bad, 0.2, 0.0], unet=TINY_UNET)  # fmt: skip


# ---- 8. messages -----------------------------------------------------------------------------------------------------
def test_checkpoint_paths_that_are_not_checkpoints_say_what_to_give(tmp_path):
    from pyramid_dm.checkpoints import read_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match=rf"'{run}' is a directory; name a .ckpt file \(e.g. {run}/checkpoints/last"):
        read_checkpoint(run, "--ckpt_path")
    folder = run / "checkpoints"  # the folder itself: its own last.ckpt, not checkpoints/checkpoints/last.ckpt
    with pytest.raises(UserError, match=rf"is a directory; name a .ckpt file \(e.g. {folder}/last.ckpt\)"):
        read_checkpoint(folder, "--ckpt_path")
    with pytest.raises(UserError, match=r"last.ckpt' is empty \(0 bytes\)"):
        read_checkpoint(folder / "last.ckpt", "--ckpt_path")
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"junk.ckpt' is not a readable PyTorch checkpoint \(\w"):
        read_checkpoint(tmp_path / "junk.ckpt", "--ckpt_path")


def test_a_very_long_data_set_name_still_names_one_cache_file():
    from pyramid_dm.eval.real_features import safe_name

    a, b = safe_name("x" * 300), safe_name("x" * 299 + "y")
    assert len(a) <= 80 and len(b) <= 80 and a != b and "/" not in a
    assert safe_name("digits") == "digits"  # short names are unchanged, so existing caches stay valid


def test_stall_and_exit_status_messages_are_one_line_without_object_addresses(caplog):
    from pyramid_dm.data.streams import CountedShards, ShardError, SkipAndCount, _raise_with_culprit

    training = CountedShards({}, "m.json", strict=False, handler=SkipAndCount(), timeout=0.5)
    with caplog.at_level("WARNING", logger="pyramid_dm.data.datamodule"):
        assert list(training.to_samples(iter([{"url": "pipe:sleep 5"}]))) == []
    assert "): shard pipe:sleep 5: no data for 0.5 s, the command stalled" in caplog.text
    assert " at 0x" not in caplog.text and "('shard" not in caplog.text
    validation = CountedShards({}, "m.json", strict=True, handler=_raise_with_culprit, timeout=0.5)
    with pytest.raises(ShardError) as info:
        list(validation.to_samples(iter([{"url": "pipe:false"}])))
    assert str(info.value) == "shard pipe:false: the command exited with status 1"


def test_an_empty_or_undecodable_image_is_named_without_an_object_address():
    import io

    from pyramid_dm.data.imageio import ImageError, read_image

    with pytest.raises(ImageError, match=r"^s.tar: sample 'a': the image is empty \(0 bytes\)$"):
        read_image(io.BytesIO(b""), "s.tar: sample 'a'")
    with pytest.raises(ImageError) as info:
        read_image(io.BytesIO(b"not an image"), "s.tar: sample 'b'")
    assert str(info.value) == "s.tar: sample 'b': cannot decode image (cannot identify image file)"


def test_a_missing_validation_shard_is_named(tmp_path):
    from pyramid_dm.data.streams import CountedShards, ShardError, _raise_with_culprit

    validation = CountedShards({}, "m.json", strict=True, handler=_raise_with_culprit, timeout=0.5)
    missing = tmp_path / "val-000000.tar"
    with pytest.raises(ShardError, match=rf"validation data: FileNotFoundError: .*'{missing}'$"):
        list(validation.to_samples(iter([{"url": str(missing)}])))


# ---- 9. found on the way --------------------------------------------------------------------------------------------
def test_a_shard_with_more_samples_than_recorded_never_lowers_the_skip_count(tmp_path):
    from pyramid_dm.data import write_shards
    from pyramid_dm.data.sources import sklearn_digits
    from pyramid_dm.data.streams import CountedShards, SkipAndCount

    manifest = write_shards(sklearn_digits(), tmp_path, per_shard=2000, progress=False)
    shard = sorted(tmp_path.glob("train-*.tar"))[0]
    handler = SkipAndCount()
    stage = CountedShards({shard.name: 10}, str(manifest), strict=False, handler=handler, timeout=5.0)
    n = sum(1 for _ in stage(iter([{"url": str(shard)}])))
    assert n > 10 and handler.skipped == 0  # reported (a warning), never a negative count


def test_skips_are_logged_when_they_change_and_at_the_end(digits_shards):
    from types import SimpleNamespace

    from pyramid_dm.data.datamodule import ShardDataModule

    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics["data/skipped"])))
    dm = ShardDataModule(shards=str(digits_shards), batch_size=4, num_workers=0)
    dm.trainer = SimpleNamespace(training=True, logger=logger, global_step=3)
    dm.skips.update(0, 4)
    dm.on_after_batch_transfer("batch", 0)
    dm.skips.update(2, 4)  # a worker skipped two samples: logged at once, not at step 50
    dm.on_after_batch_transfer("batch", 0)
    dm.trainer.global_step = 7
    dm.skips.update(0, 4)
    dm.on_after_batch_transfer("batch", 0)  # unchanged, and not a 50th step: no row
    dm.teardown("fit")  # nothing new to log either
    dm.skips.update(1, 0)  # a worker's last report, after the last batch the module saw
    dm.teardown("fit")
    assert logged == [(3, 2), (7, 3)]


# ---- 4. a resume that changes the objective -------------------------------------------------------------------------
def test_a_resume_that_changes_the_objective_is_refused_unless_allowed(session_env, tmp_path, digits_shards):
    from helpers import run_cli

    fast = ["--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
    fast += ["--trainer.callbacks.every_n_steps", "100000", "--trainer.callbacks.num_samples", "4"]
    base = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), "--exp.name", "run", *fast]
    base += ["--trainer.max_steps", "1"]
    assert run_cli(base, session_env).returncode == 0
    resume = [*base, "--ckpt_path", "last"]
    proc = run_cli([*resume, "--model.init_args.prediction", "v", "--model.init_args.lr", "1e-4"], session_env)
    assert proc.returncode == 2 and "was trained with other model options (prediction: 'eps' -> 'v')" in proc.stderr
    assert "--exp.allow_objective_change true" in proc.stderr and "Traceback" not in proc.stderr
    # the optimiser and the speed switches may change (checkpointed blocks keep the state dict's keys)
    speed = "{activation_checkpointing: true, channels_last: true}"
    proc = run_cli([*resume, "--model.init_args.lr", "1e-4", "--model.init_args.speed", speed], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training speed switches: channels_last, activation_checkpointing(" in proc.stdout + proc.stderr
    allowed = [*resume, "--model.init_args.prediction", "v", "--exp.allow_objective_change", "true"]
    proc = run_cli(allowed, session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "with changed model options (allowed): prediction: 'eps' -> 'v'" in proc.stdout + proc.stderr


# ---- 5. one run per experiment directory -----------------------------------------------------------------------------
def test_a_second_fit_into_a_running_experiment_is_refused(session_env, tmp_path, digits_shards):
    import os
    import subprocess
    import sys
    import time

    from helpers import ROOT, run_cli

    args = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), "--exp.name", "busy"]
    args += ["--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
    first = subprocess.Popen([sys.executable, "-m", "pyramid_dm", *args, "--trainer.max_steps", "100000"],
                             cwd=ROOT, env={**os.environ, **session_env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        lock = tmp_path / "busy" / ".fit.lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and "pid" in lock.read_text()):
            time.sleep(0.2)
        proc = run_cli([*args, "--trainer.max_steps", "1"], session_env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"another fit is running in {tmp_path / 'busy'} (pid {first.pid} on " in proc.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    proc = run_cli([*args, "--trainer.max_steps", "1", "--ckpt_path", "last-if-any"], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a killed run leaves no stale lock


# ---- 6. studies ------------------------------------------------------------------------------------------------------
def _synthetic_study(path):
    from test_step_search import synthetic, synthetic_space

    from pyramid_dm.eval.step_search import open_study, run_search

    space = synthetic_space()
    study = open_study(path, {"objective": "synthetic"}, space, 8, 0)
    run_search(study, space, synthetic, 6, progress=False)
    return space


def test_a_journal_cut_mid_line_keeps_its_complete_records(tmp_path, capsys):
    from optuna.trial import TrialState
    from test_step_search import synthetic

    from pyramid_dm.eval.step_search import open_study, run_search

    space = _synthetic_study(tmp_path / "s")
    journal = tmp_path / "s" / "journal.log"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-25])  # a worker killed inside its last write
    study = open_study(tmp_path / "s", {"objective": "synthetic"}, space, 8, 0)
    err = capsys.readouterr().err
    assert f"study journal {journal}: its last record was cut mid-line" in err and journal.read_bytes().endswith(b"\n")
    assert (tmp_path / "s" / "journal.log.cut").read_bytes() == whole[whole.rstrip(b"\n").rfind(b"\n") + 1 : -25]
    run_search(study, space, synthetic, 8, progress=False)  # and the study goes on
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) >= 8


def test_a_damaged_or_read_only_journal_is_named(tmp_path, monkeypatch):
    from optuna.storages import journal as optuna_journal

    from pyramid_dm.eval.step_search import open_study

    space = _synthetic_study(tmp_path / "s")
    journal = tmp_path / "s" / "journal.log"
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([lines[0], b'{"op_code": 1, "broken', *lines[1:]]))
    with pytest.raises(ValueError, match=rf"study journal {journal}: line 2 of \d+ is not a complete record"):
        open_study(tmp_path / "s", {"objective": "synthetic"}, space, 8, 0)
    _synthetic_study(tmp_path / "r")

    def read_only(self, path, *args, **kwargs):  # what opening a read-only journal raises (root ignores file modes)
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(optuna_journal.JournalFileBackend, "__init__", read_only)
    with pytest.raises(ValueError, match=r"journal.log cannot be opened for writing \(Permission denied"):
        open_study(tmp_path / "r", {"objective": "synthetic"}, space, 8, 0)


# ---- 7. silent cases of the first round ------------------------------------------------------------------------------
def test_overwrite_leaves_a_users_file_named_like_a_shard_alone(tmp_path):
    from pyramid_dm.data import ShardError, sklearn_digits, write_shards

    write_shards(sklearn_digits(), tmp_path, per_shard=2000, progress=False)
    (tmp_path / "train-000099.tar").write_bytes(b"mine, not a shard")
    write_shards(sklearn_digits(), tmp_path, per_shard=2000, progress=False, overwrite=True)
    assert (tmp_path / "train-000099.tar").read_bytes() == b"mine, not a shard"
    (tmp_path / "train-000001.tar").write_bytes(b"mine too")  # the new set below would write a shard of this name
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ShardError, match=r"\['train-000001.tar'\] would be replaced .*\(nothing was changed\)"):
        write_shards(sklearn_digits(), tmp_path, per_shard=500, progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def _folder(root, classes: dict[str, int]):
    import numpy as np
    from PIL import Image

    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: (r / "empty").mkdir(), r"class folder\(s\) \['.*/empty'\] hold no .* image"),
        (lambda r: (r / "loop").symlink_to("."), r"class folder .*/loop links to .*, the folder or above it"),
        (lambda r: (r / "dotdot").symlink_to(".."), r"class folder .*/dotdot links to .*, the folder or above it"),
    ],
    ids=["empty", "symlink loop", "dotdot"],
)
def test_a_class_folder_without_images_is_refused_by_name(tmp_path, make, message):
    from pyramid_dm.data import image_folder
    from pyramid_dm.data.sources import SourceError

    root = _folder(tmp_path / "src", {"cat": 3, "dog": 3})
    make(root)
    with pytest.raises(SourceError, match=message):
        image_folder(root)


def test_hidden_names_are_listed_as_ignored(tmp_path):
    from pyramid_dm.data import image_folder

    root = _folder(tmp_path / "src", {"cat": 3, "dog": 3})
    (root / "...").mkdir()
    (root / "cat" / ".thumb.png").write_bytes(b"x")
    (root / "loop").symlink_to(root / "loop")  # not a folder at all: listed, with why
    images = image_folder(root)
    assert images.classes == ["cat", "dog"] and f"{root / 'loop'} (a broken or looping symlink)" in images.ignored
    assert f"{root / '...'} (hidden name)" in images.ignored and f"{root / 'cat' / '.thumb.png'} (hidden name)" in (
        images.ignored
    )


def test_a_non_square_image_in_a_shard_is_centre_cropped_not_stretched_and_said(caplog):
    import io

    import numpy as np
    from PIL import Image

    from pyramid_dm.data.datamodule import decode_sample

    arr = np.zeros((8, 16), np.uint8)
    arr[:, 4:12] = 255  # the centre square is white, the sides black
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    sample = {"__key__": "k", "__url__": "wide-0.tar", "png": buf.getvalue()}
    with caplog.at_level("WARNING"):
        x, _, _ = decode_sample(sample, 1, 8, hflip=False)
    assert x.shape == (1, 8, 8) and torch.all(x == 1.0)  # stretched, its sides would be black
    assert "wide-0.tar: sample 'k' is 16x8, not square: centre-cropped to 8x8" in caplog.text


def test_evaluate_refuses_shards_with_other_classes_than_the_model(digits_shards):
    from types import SimpleNamespace

    from pyramid_dm.commands.evaluate import resolve_data

    ckpt = {"datamodule_hyper_parameters": {"shards": str(digits_shards)}}
    with pytest.raises(UserError, match=r"trained on 3 classes but the shards .* hold 10: evaluate against the data"):
        resolve_data(None, ckpt, "m.ckpt", model=SimpleNamespace(num_classes=3))
    manifest, _ = resolve_data(None, ckpt, "m.ckpt", model=SimpleNamespace(num_classes=0))  # unconditional: any data
    assert manifest.num_classes == 10


def test_ctrl_c_during_shards_is_one_line_that_says_the_set_is_safe(tmp_path, monkeypatch, capsys):
    from pyramid_dm.cli import main
    from pyramid_dm.commands import shards

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "write_shards", interrupted)
    assert main(["shards", "digits", "--out", str(tmp_path / "s"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: {tmp_path / 's'} is as it was" in err and "Traceback" not in err


def test_a_disk_filling_up_during_a_checkpoint_save_is_one_line_and_loses_nothing(tmp_path, monkeypatch):
    from pyramid_dm import checkpoint_io
    from pyramid_dm.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, tmp_path / "last.ckpt")

    def full(obj, f):
        f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(checkpoint_io.torch, "save", full)
    with pytest.raises(UserError, match=rf"cannot write checkpoint last.ckpt in {tmp_path} \(the write failed; [\d.]+ "
                       r"GiB free there\): the checkpoints already written are intact"):  # fmt: skip
        io.save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no .partial left


# ---- 3. nothing named by a checkpoint is imported before it is checked -----------------------------------------------
MARKER = "import pathlib\npathlib.Path('imported.txt').write_text('the module ran')\nclass Model: family = 'pixel'\n"


def test_a_module_named_by_a_checkpoint_or_a_config_beside_it_is_not_imported(session_env, tmp_path):
    from helpers import ROOT, run_cli

    (tmp_path / "evil_marker.py").write_text(MARKER)
    ckpt = torch.load(ROOT / "tests/fixtures/legacy/pixel.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "evil_marker.Model"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    config = str(ROOT / "configs" / "quickstart.yaml")
    for command in ("fit", "validate"):
        args = [
            command,
            "--config",
            config,
            "--exp.root",
            str(tmp_path / "runs"),
            "--ckpt_path",
            "run/checkpoints/last.ckpt",
        ]
        proc = run_cli(args, session_env, cwd=tmp_path)
        assert proc.returncode == 2 and "names the model class 'evil_marker.Model'" in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "imported.txt").exists()
    (run / "config.yaml").write_text("model:\n  class_path: evil_marker.Model\n")
    proc = run_cli(["evaluate", "--ckpt_path", "run/checkpoints/last.ckpt", "--no_wandb"], session_env, cwd=tmp_path)
    assert proc.returncode == 2 and "outside pyramid_dm; it was not imported" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "imported.txt").exists()


# ---- 2. stalls end the run -----------------------------------------------------------------------------------------
def test_an_all_stalled_training_source_fails_naming_its_shards():
    import itertools
    import time

    from pyramid_dm.data.streams import CountedShards, ShardError, SkipAndCount

    stage = CountedShards({}, "m.json", strict=False, handler=SkipAndCount(), timeout=0.5)
    urls = itertools.cycle([{"url": "pipe:sleep 30"}, {"url": "pipe:sleep 31"}])  # resampled forever
    start = time.monotonic()
    with pytest.raises(ShardError, match=r"no training sample arrived for \d+ s \(3 x data.init_args.read_timeout_s "
                       r"0.5\); these shards stalled: \['pipe:sleep 30', 'pipe:sleep 31'\]"):  # fmt: skip
        list(stage(urls))
    assert time.monotonic() - start < 10


def test_a_stalled_shard_is_not_drawn_again_while_the_others_deliver(tmp_path):
    import itertools

    from pyramid_dm.data import sklearn_digits, write_shards
    from pyramid_dm.data.streams import CountedShards, SkipAndCount

    write_shards(sklearn_digits(), tmp_path, per_shard=400, progress=False)
    good = [{"url": str(p)} for p in sorted(tmp_path.glob("train-*.tar"))]
    handler = SkipAndCount()
    stage = CountedShards({}, "m.json", strict=False, handler=handler, timeout=1.0)
    urls = itertools.cycle([{"url": "pipe:sleep 30"}, *good])
    samples = list(itertools.islice(stage(urls), 5000))  # the good shards cycle about three times (< 1 s)
    assert len(samples) == 5000 and handler.skipped == 1  # drawn once in that time (its cool-down is 10 s), not 3x
