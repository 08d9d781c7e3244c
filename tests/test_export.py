"""``export``: a checkpoint as safetensors + JSON + a model card, with no pickle; read back by ``load_engine`` and by
every command that takes ``--ckpt_path``, sampling exactly as the checkpoint does."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import ROOT, run_cli

from pyramid_dm.engine import load_engine

FAST = ["--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
LEGACY = ROOT / "tests" / "fixtures" / "legacy"


def fit(root, config: str, name: str, env, *extra: str):
    args = ["fit", "--config", config, "--exp.root", str(root), "--exp.name", name, "--trainer.max_steps", "3"]
    proc = run_cli([*args, "--trainer.val_check_interval", "3", *FAST, *extra], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / name / "checkpoints" / "last.ckpt"


def same_samples(a, b, n: int = 4) -> None:
    labels = a.sample_labels(0, n)
    x = a.sample(n, "ddim", 3, labels=labels, generator=torch.Generator().manual_seed(0))
    y = b.sample(n, "ddim", 3, labels=labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, y)


def test_a_pixel_export_holds_no_pickle_and_samples_as_its_checkpoint(session_env, tmp_path):
    ckpt = fit(tmp_path, "configs/quickstart.yaml", "pix", session_env)
    out = tmp_path / "exports" / "pix"
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": [{"sampler": "ddim", "steps": 3, "nfe": 3, "fid_digits_clf": 12.5}]}))
    proc = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(out), "--results", str(results)], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "model.safetensors", "pyramid_dm.json"]
    for path in out.iterdir():  # a pickle stream starts with the PROTO opcode 0x80; torch.save writes a zip of them
        head = path.read_bytes()[:4]
        assert head[:1] != b"\x80" and head != b"PK\x03\x04", path
    card = (out / "README.md").read_text()
    assert "builtin:digits" in card and "3 steps" in card and "| ddim | 3 | 3 | 12.5 |" in card
    same_samples(load_engine(ckpt), load_engine(out))
    proc = run_cli(["sample", "--ckpt_path", str(out), "--num_samples", "4", "--out", str(tmp_path / "s")], session_env)
    assert proc.returncode == 0 and (tmp_path / "s" / "samples.json").is_file(), proc.stderr[-2000:]
    again = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(out)], session_env)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    elsewhere = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path), "--overwrite"], session_env)
    assert elsewhere.returncode == 2 and "is not an export folder" in elsewhere.stderr  # never wipes another folder
    assert ckpt.is_file()
    proc = run_cli(["sample", "--ckpt_path", str(out), "--no_ema", "--out", str(tmp_path / "s2")], session_env)
    assert proc.returncode == 2 and "holds the EMA weights only" in proc.stderr


def test_a_latent_export_carries_its_autoencoder(session_env, tmp_path):
    ae = tmp_path / "ae.ckpt"
    shutil.copy(LEGACY / "ae_kl.ckpt", ae)
    ckpt = fit(
        tmp_path, "configs/latent/digits.yaml", "lat", session_env, "--model.init_args.autoencoder_ckpt", str(ae)
    )
    out = tmp_path / "lat_export"
    proc = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(out)], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = load_engine(ckpt)
    ae.unlink()  # the export needs no autoencoder file
    exported = load_engine(out)
    assert any(k.startswith("first_stage.") for k in exported.state_dict())
    same_samples(reference, exported)


def test_a_damaged_export_is_named(tmp_path):
    from pyramid_dm.errors import UserError

    (tmp_path / "pyramid_dm.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a readable pyramid_dm export"):
        load_engine(tmp_path)
