"""``shards encode``: latents stored once beside the images. Training from them computes the loss the images give
(same draws), latent pyramids pool the stored latent as they pool an encoded one, flips are encoded from the mirrored
image, and latents of another autoencoder (or for a model that diffuses pixels) are refused by name."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, run_main

from pyramid_dm.data import ShardDataModule
from pyramid_dm.errors import UserError

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
FAST = ["--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
FAST += ["--trainer.callbacks.every_n_steps", "100000", "--trainer.callbacks.num_samples", "4"]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, digits_shards, session_env):
    """The digits shards encoded by the KL fixture autoencoder (4x4x4 latents), with flips."""
    out = tmp_path_factory.mktemp("encoded") / "digits_kl"
    args = ["shards", "encode", str(digits_shards), "--autoencoder", str(LEGACY / "ae_kl.ckpt"), "--out", str(out)]
    proc = run_cli([*args, "--hflip", "--no-progress", "--batch", "100"], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def encoded_msvq(tmp_path_factory, digits_shards):
    """The digits shards encoded by the multi-scale VQ fixture autoencoder (every level, coarse first), in process."""
    from pyramid_dm.commands.shards import main

    out = tmp_path_factory.mktemp("encoded") / "digits_msvq"
    args = ["encode", str(digits_shards), "--autoencoder", str(LEGACY / "ae_msvq.ckpt"), "--out", str(out)]
    assert main([*args, "--no-progress", "--batch", "200"]) == 0
    return out


def batches(shards, n=2, **kw):
    dm = ShardDataModule(str(shards), batch_size=16, num_workers=0, train_batches_per_epoch=n, **kw)
    return list(dm.train_dataloader()), list(dm.val_dataloader())


def test_the_encoded_set_keeps_every_image_and_stores_the_latents_of_it_and_of_its_mirror(encoded, digits_shards):
    from pyramid_dm.data.manifest import Manifest
    from pyramid_dm.stages import AutoencoderStage, load_autoencoder_checkpoint

    src, enc = Manifest.load(digits_shards), Manifest.load(encoded)
    record = enc.data["encoded"]
    ae = load_autoencoder_checkpoint(LEGACY / "ae_kl.ckpt")
    stage = AutoencoderStage(ae["hparams"], ae["state_dict"])
    assert (
        record["level_shapes"] == [[4, 4, 4]]
        and record["hflip"]
        and record["autoencoder_sha256"] == stage.fingerprint()
    )
    assert {s: enc.count(s) for s in ("train", "val")} == {s: src.count(s) for s in ("train", "val")}
    (train_images, _), (train_latents, _) = batches(digits_shards, 1), batches(encoded, 1)
    images, labels, seeds = train_images[0]
    latents, labels2, seeds2 = train_latents[0]
    assert torch.equal(labels, labels2) and torch.equal(seeds, seeds2)  # the same samples, in the same order
    assert latents.shape == (16, 64)
    torch.testing.assert_close(latents, stage.pack(stage.encode(images)), rtol=1e-6, atol=1e-6)
    import tarfile

    with tarfile.open(enc.shard_paths("train")[0]) as tar:
        key = tar.getnames()[0].split(".")[0]
        flipped = np.load(io.BytesIO(tar.extractfile(f"{key}.latflip.npy").read()))
        png = tar.extractfile(f"{key}.png").read()
    from pyramid_dm.data.datamodule import decode_sample

    image = decode_sample({"__key__": key, "png": png}, 1, 8, hflip=False)[0]
    torch.testing.assert_close(torch.from_numpy(flipped)[None], stage.pack(stage.encode(image.flip(-1)[None])))


@pytest.mark.parametrize("family", ["latent", "latent_pyramid", "msvq_pyramid"])
def test_training_from_encoded_latents_gives_the_loss_the_images_give(request, digits_shards, family):
    from pyramid_dm.models import LatentDiffusion, PyramidDiffusion

    unet = {"base_channels": 16, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
            "norm_groups": 8}  # fmt: skip
    kl, msvq = str(LEGACY / "ae_kl.ckpt"), str(LEGACY / "ae_msvq.ckpt")
    torch.manual_seed(0)
    if family == "latent":
        model = LatentDiffusion(8, 1, num_classes=10, autoencoder_ckpt=kl, unet=unet)
    elif family == "latent_pyramid":
        model = PyramidDiffusion(8, 1, num_classes=10, first_stage="latent_pyramid", resolutions=[2, 4],
                                 autoencoder_ckpt=kl, unet=unet)  # fmt: skip
    else:
        model = PyramidDiffusion(8, 1, num_classes=10, first_stage="autoencoder", autoencoder_ckpt=msvq, unet=unet)
    encoded = request.getfixturevalue("encoded_msvq" if family == "msvq_pyramid" else "encoded")
    engine = model.engine
    (train_i, val_i), (train_l, val_l) = batches(digits_shards), batches(encoded)
    engine.fit_latent_scale(train_i[0][0])
    scale = engine.latent_scale.clone()
    engine.fit_latent_scale(train_l[0][0])
    torch.testing.assert_close(engine.latent_scale, scale)
    for (images, labels, _), (latents, _, _) in zip(train_i, train_l, strict=True):
        losses = []
        for batch in (images, latents):
            torch.manual_seed(1)
            losses.append(engine.training_loss(batch, labels)[0])
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    images, labels, seeds = val_i[0]
    latents = val_l[0][0]
    torch.testing.assert_close(
        engine.seeded_loss(images, labels, seeds), engine.seeded_loss(latents, labels, seeds), rtol=1e-5, atol=1e-6
    )


def test_a_fit_reads_encoded_shards_and_refuses_another_autoencoders(encoded, tmp_path, session_env):
    base = ["fit", "--config", "configs/latent/digits.yaml", "--exp.root", str(tmp_path), *FAST]
    base += ["--data.init_args.shards", str(encoded), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
    proc = run_cli([*base, "--exp.name", "ok", "--model.init_args.autoencoder_ckpt", str(LEGACY / "ae_kl.ckpt")],
                   session_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "ok" / "checkpoints").glob("last.ckpt"))
    other = torch.load(LEGACY / "ae_kl.ckpt", weights_only=False)  # the same autoencoder, one weight changed
    name = next(k for k in other["state_dict"] if k.endswith("weight"))
    other["state_dict"][name] = other["state_dict"][name] + 0.01
    torch.save(other, tmp_path / "other_ae.ckpt")
    other_args = ["--exp.name", "other", "--model.init_args.autoencoder_ckpt", str(tmp_path / "other_ae.ckpt")]
    proc = run_cli([*base, *other_args], session_env)
    assert proc.returncode == 2 and "holds latents of another autoencoder" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    pixel = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), "--exp.name", "pix", *FAST]
    proc = run_cli([*pixel, "--data.init_args.shards", str(encoded), "--trainer.max_steps", "1"], session_env)
    assert proc.returncode == 2 and "diffuses images, not its latents" in proc.stderr, proc.stderr[-2000:]


def test_bad_encode_requests_are_clear_errors(encoded, digits_shards, tmp_path, session_env, monkeypatch, capsys):
    args = ["shards", "encode", str(encoded), "--autoencoder", str(LEGACY / "ae_kl.ckpt"), "--out", str(tmp_path / "x")]
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code != 0 and "already holds encoded latents" in err
    missing = tmp_path / "nope.ckpt"
    args = ["shards", "encode", str(digits_shards), "--autoencoder", str(missing), "--out", str(tmp_path / "y")]
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code != 0 and f"--autoencoder '{missing}' does not exist" in err and not (tmp_path / "y").exists()
    with pytest.raises(UserError, match="data.init_args.resize: .* holds latents of 8 px images"):
        ShardDataModule(str(encoded), resize=16)
    shutil.copytree(encoded, tmp_path / "noflip")
    manifest = json.loads((tmp_path / "noflip" / "manifest.json").read_text())
    manifest["encoded"]["hflip"] = False
    (tmp_path / "noflip" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="data.init_args.hflip: .* without flipped copies"):
        ShardDataModule(str(tmp_path / "noflip"), hflip=True)


def test_bench_train_times_the_latent_step_from_images_and_from_stored_latents(
    encoded, digits_shards, tmp_path, session_env, monkeypatch, capsys
):
    out = tmp_path / "rows.json"
    args = ["bench", "train", "--config", "configs/latent/digits.yaml", "--shards", str(digits_shards),
            "--encoded-shards", str(encoded), "--variants", "eager", "--batch", "8", "--rounds", "1", "--steps", "1",
            "--warmup", "1", "--workers", "0", "--loader-batches", "2", "--json", str(out),
            "--", "--model.init_args.autoencoder_ckpt", str(LEGACY / "ae_kl.ckpt")]  # fmt: skip
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code == 0, err
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"eager", "eager+latents"}
    assert rows["eager"]["reads"] == "images" and rows["eager+latents"]["reads"] == "latents"
    assert rows["eager"]["train_gflops_per_image"] == rows["eager+latents"]["train_gflops_per_image"] > 0
    assert all(r["images_per_s"] > 0 and r["loader_images_per_s"] > 0 for r in rows.values())
