"""Bad data, stalled storage, wrong resume paths and interrupted writes never cost a run (docs/reliability.md): one
test per guarantee, through the command line where a user would meet it."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image
from test_datamodule import rewrite_shard

from pyramid_dm.data import Manifest, SampleError, ShardError, image_folder, sklearn_digits, write_shards
from pyramid_dm.data.datamodule import decode_sample
from pyramid_dm.data.imageio import ImageError, read_image
from pyramid_dm.data.sources import Example, ImageSet
from pyramid_dm.data.streams import CountedShards, SkipAndCount
from pyramid_dm.errors import one_line

FAST = ["--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
FAST += ["--trainer.callbacks.every_n_steps", "100000", "--trainer.callbacks.num_samples", "4"]


@pytest.fixture
def shards(tmp_path, digits_shards) -> Path:
    return Path(shutil.copytree(digits_shards, tmp_path / "digits"))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _sample(cls=None, key="k1", image=None) -> dict:
    sample = {
        "__key__": key,
        "__url__": "shard-7.tar",
        "png": _png(np.zeros((8, 8), np.uint8)) if image is None else image,
    }
    if cls is not None:
        sample["cls"] = cls
    return sample


# ---- 1. labels ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,match",
    [
        (b"10", r"label 10, outside the data set's classes 0..9"),
        (b"-1", r"label -1, outside"),
        (b"11", r"label 11, outside"),
        (None, r"has no .cls label but the data set has 10 classes"),
        (b"cat", r"label b'cat', not an integer class id"),
    ],
)
def test_bad_labels_name_the_shard_and_key(cls, match):
    with pytest.raises(SampleError, match=rf"shard-7.tar: sample 'k1'.*{match}|shard-7.tar: sample 'k1' {match}"):
        decode_sample(_sample(cls), 1, 8, hflip=False, num_classes=10)
    assert decode_sample(_sample(b"9"), 1, 8, hflip=False, num_classes=10)[1] == 9
    assert decode_sample(_sample(cls), 1, 8, hflip=False, num_classes=0)[1] == -1  # unlabelled data: no label read


def test_a_run_whose_shards_are_mostly_bad_stops_with_the_skip_rate(shards, session_env, tmp_path):
    """Out-of-range labels in every training shard: skipped and counted, and the run stops at the skip-rate limit
    instead of training days on what is left (or dying on an IndexError in the class embedding)."""
    for entry in Manifest.load(shards).split("train")["shards"]:
        rewrite_shard(shards, entry["file"], lambda m: m.update({k: b"42" for k in m if k.endswith(".cls")}))
    args = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), "--trainer.max_steps", "50"]
    args += ["--data.init_args.shards", str(shards), "--data.init_args.batch_size", "16", *FAST]
    proc = run_cli(args, session_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "were skipped as corrupt" in proc.stderr and "data.max_skip_rate 0.1" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- 2. stalled storage ---------------------------------------------------------------------------------------------
def test_a_stalled_pipe_shard_is_skipped_in_training_and_named_in_validation(shards, session_env, tmp_path):
    handler = SkipAndCount()
    stalled = CountedShards({}, "m.json", strict=False, handler=handler, timeout=1.0)
    start = time.perf_counter()
    assert list(stalled.to_samples(iter([{"url": "pipe:sleep 30"}]))) == [] and handler.skipped == 1
    assert time.perf_counter() - start < 10
    args = ["validate", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), *FAST]
    args += ["--data.init_args.shards", str(shards), "--data.init_args.val_urls", "pipe:sleep 120"]
    args += ["--data.init_args.read_timeout_s", "2"]
    start = time.perf_counter()
    proc = run_cli(args, session_env)
    assert proc.returncode == 2 and "shard pipe:sleep 120: no data for 2 s" in proc.stderr, proc.stderr[-2000:]
    assert time.perf_counter() - start < 90 and "Traceback" not in proc.stderr


# ---- 3. resume -------------------------------------------------------------------------------------------------------
def test_resume_paths_that_would_start_over_or_crash_are_one_line_errors(session_env, tmp_path, digits_shards):
    base = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), "--trainer.max_steps", "1"]
    proc = run_cli([*base, "--exp.name", "typo", "--ckpt_path", "last", *FAST], session_env)
    assert proc.returncode == 2 and f"--ckpt_path last: no checkpoint in {tmp_path / 'typo'}" in proc.stderr
    assert not list((tmp_path / "typo").glob("checkpoints/*.ckpt"))  # nothing trained from step 0
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "ae.ckpt").write_bytes((Path(__file__).parent / "fixtures/legacy/ae_kl.ckpt").read_bytes())
    for path, message in [
        (tmp_path, "is a directory"),
        (tmp_path / "empty.ckpt", "is empty (0 bytes): not a checkpoint, or a copy that never finished"),
        (tmp_path / "ae.ckpt", "holds an autoencoder model (pyramid_dm.models.autoencoder.AutoencoderModel)"),
    ]:
        proc = run_cli([*base, "--exp.name", "x", "--ckpt_path", str(path), *FAST], session_env)
        assert proc.returncode == 2 and f"--ckpt_path '{path}' {message}" in proc.stderr, proc.stderr[-1500:]
        assert "Traceback" not in proc.stderr
    proc = run_cli([*base, "--exp.name", "fresh", "--ckpt_path", "last-if-any", *FAST], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the opt-in: no checkpoint yet, so it starts fresh


# ---- 5. shard sets ---------------------------------------------------------------------------------------------------
def test_an_interrupted_overwrite_keeps_the_old_set_and_foreign_files(tmp_path):
    write_shards(sklearn_digits(), tmp_path, per_shard=500, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "notes.tar").write_bytes(b"mine")  # a file the shard writer did not write

    def boom():
        raise KeyboardInterrupt

    good = sklearn_digits().splits["train"][:25]
    broken = ImageSet("test", None, {"train": [*good, Example("bad", None, boom)], "val": []})
    with pytest.raises(KeyboardInterrupt):
        write_shards(broken, tmp_path, per_shard=10, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    Manifest.load(tmp_path).check("train", checksums=True)  # the old set is intact and readable
    write_shards(sklearn_digits(), tmp_path, per_shard=1000, overwrite=True, progress=False)
    assert Manifest.load(tmp_path).data["per_shard"] == 1000 and (tmp_path / "notes.tar").read_bytes() == b"mine"
    assert not (tmp_path / "train-000003.tar").exists() and not list(tmp_path.glob(".*"))


def test_shards_folder_skips_and_counts_unreadable_images_and_reports_ignored_paths(tmp_path, capsys):
    from pyramid_dm.cli import main

    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls / "nested").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(src / cls / f"{i}.png")
    (src / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (src / "a" / "readme.txt").write_text("x")
    (src / "stray.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    out = tmp_path / "out"
    assert main(["shards", "folder", str(src), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["count"] == 1 and "broken.png" in manifest["skipped"]["images"][0]["image"]
    assert sum(s["count"] for s in manifest["splits"].values()) == 8
    assert "1 unreadable image(s) skipped, 4 path(s) ignored" in err and "nested/ (nested folder)" in err
    assert "readme.txt (not a PNG/JPEG image)" in err and "stray.png (beside the class folders)" in err
    strict = ["shards", "folder", str(src), "--out", str(tmp_path / "strict"), "--no-progress", "--strict"]
    assert main(strict) == 2 and "broken.png: cannot decode image" in capsys.readouterr().err


# ---- 6. high bit depth ----------------------------------------------------------------------------------------------
def test_sixteen_bit_images_keep_their_relative_values(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63000 of 65535
    (tmp_path / "src").mkdir()
    Image.fromarray(ramp).save(tmp_path / "src" / "ramp.png")
    assert Image.open(tmp_path / "src" / "ramp.png").mode.startswith("I")
    want = np.rint(ramp / 257.0)
    loaded = np.asarray(read_image(tmp_path / "src" / "ramp.png", "ramp"), dtype=np.float64)
    assert np.abs(loaded - want).max() <= 1 and loaded.max() < 255  # not clipped to white
    sample = _sample(image=(tmp_path / "src" / "ramp.png").read_bytes())
    x, _, _ = decode_sample(sample, 1, 8, hflip=False)
    assert torch.allclose((x[0].double() + 1) * 127.5, torch.from_numpy(want), atol=1.01)
    write_shards(image_folder(tmp_path / "src", val_fraction=0.0), tmp_path / "out", progress=False)
    assert Manifest.load(tmp_path / "out").count("train") == 1


# ---- 7. resource limits ----------------------------------------------------------------------------------------------
def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (the image data is a few bytes, not that)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_an_image_declaring_a_huge_size_is_rejected_from_its_header(tmp_path):
    data = _huge_png_header(60000, 60000)
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"header declares 3,600,000,000 pixels, over the limit"):
        read_image(io.BytesIO(data), "huge.png")
    with pytest.raises(SampleError, match=r"shard-7.tar: sample .k1.: its header declares 3,600,000,000"):
        decode_sample(_sample(image=data), 1, 8, hflip=False)
    assert time.perf_counter() - start < 1.0
    src = tmp_path / "src"
    src.mkdir()
    (src / "huge.png").write_bytes(data)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "ok.png")
    write_shards(image_folder(src, val_fraction=0.0), tmp_path / "out", progress=False)
    skipped = Manifest.load(tmp_path / "out").data["skipped"]
    assert skipped["count"] == 1 and "over the limit" in skipped["images"][0]["reason"]


# ---- 8. clear errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.pop("image_size"), "manifest key 'image_size' is None, expected an integer >= 1"),
        (lambda m: m.update(image_size="8"), "manifest key 'image_size' is '8', expected an integer >= 1"),
        (lambda m: m.update(splits=[]), "manifest key 'splits' is [], expected an object of splits"),
        (lambda m: m["splits"]["train"]["shards"][0].update(bytes=1.5), "'splits.train.shards[0].bytes' is 1.5"),
        (lambda m: m["splits"]["val"]["shards"][0].update(file="../x.tar"), "shards[0].file' is '../x.tar'"),
    ],
)
def test_malformed_manifests_name_the_key(shards, edit, message):
    manifest = json.loads((shards / "manifest.json").read_text())
    edit(manifest)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        Manifest.load(shards)


def test_bad_data_settings_and_worker_errors_are_one_line(shards, session_env, tmp_path):
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["channels"] = "one"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    base = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), *FAST]
    proc = run_cli([*base, "--data.init_args.shards", str(shards)], session_env)
    assert proc.returncode == 2 and "manifest key 'channels' is 'one'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli([*base, "--data.init_args.batch_size", "0"], session_env)
    assert proc.returncode == 2 and "data.batch_size must be >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
    wrapped = SampleError(
        "Caught SampleError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"x.py\", line 1, in f\npyramid_dm.data.datamodule.SampleError: shard-7.tar: sample 'k1': bad"
    )
    assert one_line(wrapped) == "shard-7.tar: sample 'k1': bad"


# ---- 9. trust boundaries ---------------------------------------------------------------------------------------------
def test_a_manifest_name_cannot_leave_the_feature_cache(shards, session_env, monkeypatch):
    from pyramid_dm.eval.features import build_features
    from pyramid_dm.eval.real_features import real_features

    monkeypatch.setenv("PYRAMID_DM_CACHE", session_env["PYRAMID_DM_CACHE"])
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["name"] = "../../../escaped"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    cache = Path(session_env["PYRAMID_DM_CACHE"]).resolve()
    before = set(cache.parent.parent.rglob("*escaped*"))
    real_features(Manifest.load(shards), "val", build_features("random"), limit=20, progress=False)
    written = [p for p in (cache / "real_features").glob("*escaped*")]
    assert written and all(p.resolve().parent == cache / "real_features" for p in written)
    assert set(cache.parent.parent.rglob("*escaped*")) - before == set(written)


# ---- 4. interrupted checkpoint saves ---------------------------------------------------------------------------------
def _config(path: Path, root: Path, armed: bool) -> Path:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(root / "quickstart" / "checkpoints"),
                "filename": "best-step{step}",
                "auto_insert_metric_name": False,
                "monitor": "step",
                "mode": "max",
                "save_top_k": 1,
                "save_last": True,
            },
        }
    ]
    if armed:
        callbacks.append({"class_path": "kill_during_save.Arm"})
    config = {"defaults": [str(Path(__file__).parents[1] / "configs/quickstart.yaml")]}
    config["trainer"] = {"callbacks": callbacks, "val_check_interval": 2, "enable_progress_bar": False}
    path.write_text(json.dumps(config))
    return path


def test_a_kill_between_checkpoint_writes_leaves_only_what_was_promised_after_resume(session_env, tmp_path):
    tests = str(Path(__file__).parent)
    env = {**session_env, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    args = ["--exp.root", str(tmp_path), "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "32"]
    proc = run_cli(
        ["fit", "--config", str(_config(tmp_path / "a.yaml", tmp_path, True)), *args, "--trainer.max_steps", "6"], env
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed between writing best-step4 and deleting best-step2
    folder = tmp_path / "quickstart" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best-step2.ckpt", "best-step4.ckpt", "last.ckpt"]
    (folder / ".last.ckpt.partial").write_bytes(b"half a checkpoint")  # as a kill inside a write leaves it
    resume = ["fit", "--config", str(_config(tmp_path / "b.yaml", tmp_path, False)), *args, "--ckpt_path", "last"]
    proc = run_cli([*resume, "--trainer.max_steps", "8"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from a checkpoint that ended before the epoch ended" not in proc.stderr  # the stream is resumable
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["best-step8.ckpt", "last.ckpt"], names
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8 and last["loops"]["fit_loop"]["state_dict"]["combined_loader"]
