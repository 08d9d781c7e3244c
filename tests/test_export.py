"""``export``: a checkpoint as safetensors + JSON + a model card in diffusers' layout, with no pickle; read back by
``load_engine`` and by every command that takes ``--ckpt_path``, sampling exactly as the checkpoint does; loaded by
``PyramidDMPipeline`` (and ``DiffusionPipeline`` with the folder's pipeline.py), where diffusers' own schedulers sample
it as pyramid_dm's samplers do on the same grid from the same noise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import diffusers  # test-only dependency ([dev])
import pytest
import torch
from helpers import ROOT, run_cli
from safetensors.torch import save_file

from pyramid_dm.commands import export
from pyramid_dm.diffusion import ClassifierFreeGuidance
from pyramid_dm.diffusion.samplers.core import get_sampler
from pyramid_dm.engine import load_engine
from pyramid_dm.pipelines import PyramidDMPipeline

FAST = ["--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
LEGACY = ROOT / "tests" / "fixtures" / "legacy"
TOL = 1e-4


def fit(root, config: str, name: str, env, *extra: str):
    args = ["fit", "--config", config, "--exp.root", str(root), "--exp.name", name, "--trainer.max_steps", "3"]
    proc = run_cli([*args, "--trainer.val_check_interval", "3", *FAST, *extra], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / name / "checkpoints" / "last.ckpt"


def export_to(ckpt, out, env, *extra: str):
    proc = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(out), *extra], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory, session_env):
    """A 3-step quickstart run and its export (with an evaluate row for the card); shared by this file's tests."""
    root = tmp_path_factory.mktemp("pix")
    ckpt = fit(root, "configs/quickstart.yaml", "pix", session_env)
    results = root / "results.json"
    results.write_text(json.dumps({"rows": [{"sampler": "ddim", "steps": 3, "nfe": 3, "fid_digits_clf": 12.5}]}))
    return ckpt, export_to(ckpt, root / "exports" / "pix", session_env, "--results", str(results))


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, session_env):
    """A latent run on a copy of the legacy KL autoencoder, exported, and the autoencoder file deleted after."""
    root = tmp_path_factory.mktemp("lat")
    ae = root / "ae.ckpt"
    shutil.copy(LEGACY / "ae_kl.ckpt", ae)
    ckpt = fit(root, "configs/latent/digits.yaml", "lat", session_env, "--model.init_args.autoencoder_ckpt", str(ae))
    reference = load_engine(ckpt)
    out = export_to(ckpt, root / "lat_export", session_env)
    ae.unlink()  # the export needs no autoencoder file
    return reference, out


def same_samples(a, b, n: int = 4) -> None:
    labels = a.sample_labels(0, n)
    x = a.sample(n, "ddim", 3, labels=labels, generator=torch.Generator().manual_seed(0))
    y = b.sample(n, "ddim", 3, labels=labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, y)


def test_a_pixel_export_holds_no_pickle_and_samples_as_its_checkpoint(pixel_run, session_env, tmp_path):
    ckpt, out = pixel_run
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md",
        "config.yaml",
        "model_index.json",
        "pipeline.py",
        "pyramid_dm.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    for path in out.rglob("*.*"):  # a pickle stream starts with the PROTO opcode 0x80; torch.save writes a zip of them
        head = path.read_bytes()[:4]
        assert head[:1] != b"\x80" and head != b"PK\x03\x04", path
    card = (out / "README.md").read_text()
    assert "builtin:digits" in card and "3 steps" in card and "| ddim | 3 | 3 | 12.5 |" in card
    assert "## Training config" in card and (out / "config.yaml").read_text().strip() in card
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


def test_a_latent_export_carries_its_autoencoder(latent_run):
    reference, out = latent_run
    exported = load_engine(out)
    assert any(k.startswith("first_stage.") for k in exported.state_dict())
    same_samples(reference, exported)


def test_a_damaged_export_is_named(tmp_path):
    from pyramid_dm.errors import UserError

    (tmp_path / "pyramid_dm.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a readable pyramid_dm export"):
        load_engine(tmp_path)


def legacy_export(name: str, tmp_path):
    out = tmp_path / name
    assert export.main(["--ckpt_path", str(LEGACY / f"{name}.ckpt"), "--out", str(out)]) == 0
    return out


def pipeline(out):
    pipe = PyramidDMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(engine, sampler: str, scheduler, z, labels=None, guidance: float = 1.0):
    """pyramid_dm's ``sampler`` from the same noise on the scheduler's grid, as images in [0, 1]."""
    schedule = engine.schedules[0]
    if engine.prediction == "flow":  # the scheduler's sigma is the path's time t; sigma~ = t / (1 - t)
        t = torch.as_tensor(scheduler.sigmas, dtype=torch.float64)
        sigmas = (t / (1 - t).clamp(min=1e-300)).clamp(max=float(schedule.sigma(torch.tensor(1.0))))
    elif sampler == "euler":
        sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float64)
    else:  # diffusers' timestep k is our t = (k + 1) / T
        k = scheduler.timesteps.double()
        sigmas = torch.cat([schedule.sigma((k + 1) / scheduler.config.num_train_timesteps), torch.zeros(1).double()])
    den = engine.denoiser()
    if guidance != 1.0:
        den = ClassifierFreeGuidance(den, guidance, engine.conditioning(torch.full_like(labels, -1)))
    x = get_sampler(sampler)(den, z, sigmas, cond=engine.conditioning(labels))
    return (engine.decode([x.float()]).clamp(-1, 1) / 2 + 0.5).clamp(0, 1)


def check_schedulers(out, pairs, steps=(8,), guidance: float = 1.0):
    pipe, engine = pipeline(out), load_engine(out)
    labels = engine.sample_labels(0, 4)
    z = torch.randn(4, *engine.level_shapes[0], generator=torch.Generator().manual_seed(0))
    for sampler, scheduler in pairs:
        for n in steps:
            pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
            got = pipe(4, n, latents=z, class_labels=labels, guidance_scale=guidance, output_type="pt").images
            want = ours(engine, sampler, pipe.scheduler, z, labels, guidance)
            assert got.shape == (4, *engine.image_shape) and got.std() > 0.05
            assert (got - want).abs().max().item() <= TOL, (scheduler, n)


def test_diffusers_samples_a_pixel_export_as_pyramid_dm(pixel_run):
    pixel_export = pixel_run[1]
    index = json.loads((pixel_export / "model_index.json").read_text())
    assert index["unet"] == ["pyramid_dm.pipelines", "PyramidDMDenoiser"] and index["vae"] == [None, None]
    config = json.loads((pixel_export / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "epsilon" and config["thresholding"]  # x0_hat clipped to [-1, 1]
    check_schedulers(pixel_export, [("ddim", "DDIMScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler")], (8, 25))
    assert "DDIMScheduler, DPMSolverMultistepScheduler" in (pixel_export / "README.md").read_text()


def test_diffusers_samples_a_latent_export_with_its_autoencoder(latent_run):
    latent_export = latent_run[1]
    pipe = pipeline(latent_export)
    assert type(pipe.vae).__name__ == "PyramidDMFirstStage" and pipe.scheduler is not None
    pairs = [("ddim", "DDIMScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler")]
    check_schedulers(latent_export, [*pairs, ("euler", "EulerDiscreteScheduler")])
    # guidance on the prediction is guidance on D (affine in it); exact where x0_hat is not clipped (see pipelines.py)
    check_schedulers(latent_export, [("dpmpp_2m", "DPMSolverMultistepScheduler")], guidance=2.0)
    images = pipe(2, 4, generator=torch.Generator().manual_seed(0)).images  # PIL, as diffusers' pipelines give
    assert len(images) == 2 and images[0].size == (8, 8)  # digits: 8x8, one channel


def test_diffusion_pipeline_loads_an_export_through_its_pipeline_file(pixel_run, session_env):
    pixel_export = pixel_run[1]
    code = (
        "import torch, diffusers\n"
        f"pipe = diffusers.DiffusionPipeline.from_pretrained({str(pixel_export)!r}, trust_remote_code=True)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "img = pipe(2, 3, generator=torch.Generator().manual_seed(0), output_type='np').images\n"
        "print(type(pipe).__name__, type(pipe.scheduler).__name__, img.shape)\n"
    )
    env = {**os.environ, **session_env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:2] == ["PyramidDMPipeline", "DPMSolverMultistepScheduler"]
    refused = subprocess.run(
        [sys.executable, "-c", code.replace(", trust_remote_code=True", "")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert refused.returncode != 0 and "trust_remote_code=True" in refused.stderr  # diffusers' own guard, kept


def test_a_flow_export_maps_onto_flow_match_euler(tmp_path):
    out = legacy_export("flow", tmp_path)
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    check_schedulers(out, [("flow_euler", "FlowMatchEulerDiscreteScheduler")], (4, 12))


def test_a_pyramid_export_samples_with_pyramid_dm_in_diffusers(tmp_path):
    out = legacy_export("pyramid", tmp_path)
    assert json.loads((out / "model_index.json").read_text())["scheduler"] == [None, None]
    assert "No diffusers scheduler samples it exactly (a 2-level model" in (out / "README.md").read_text()
    pipe, engine = pipeline(out), load_engine(out)
    got = pipe(2, [3, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    want = engine.sample(2, steps=[3, 2], generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, (want / 2 + 0.5).clamp(0, 1))


def test_a_format_1_export_still_samples_as_before(tmp_path):
    """The first exports kept every weight in one model.safetensors (network under ``ema.module.``)."""
    ckpt = torch.load(LEGACY / "pixel.ckpt", map_location="cpu", weights_only=True)
    keep = ("ema.module.", "first_stage.", "latent_scale")
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith(keep)}
    old = tmp_path / "old"
    old.mkdir()
    save_file(state, old / "model.safetensors")
    new = legacy_export("pixel", tmp_path)
    record = json.loads((new / "pyramid_dm.json").read_text())
    (old / "pyramid_dm.json").write_text(json.dumps({**record, "format": 1}))
    a, b = load_engine(old), load_engine(new)
    same_samples(a, b)


def test_the_card_lists_the_newest_evaluation_of_the_checkpoints_step(pixel_run, tmp_path):
    ckpt, _ = pixel_run
    run, step = ckpt.parent.parent, torch.load(ckpt, weights_only=False)["global_step"]
    for name, at, fid in (("old", step, 30.0), ("new", step, 20.0), ("other-step", step + 1, 10.0)):
        (run / "eval" / name).mkdir(parents=True)
        row = {"sampler": "ddim", "steps": 5, "nfe": 5, "fid_digits_clf": fid}
        (run / "eval" / name / "results.json").write_text(json.dumps({"meta": {"global_step": at}, "rows": [row]}))
        time.sleep(0.01)  # distinct modification times: "new" is newer than "old"
    assert export.main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "card")]) == 0
    card = (tmp_path / "card" / "README.md").read_text()
    assert "| ddim | 5 | 5 | 20 |" in card and "| 30 |" not in card and "| 10 |" not in card
    shutil.rmtree(run / "eval")


def test_an_edm_preconditioned_export_gives_its_denoiser_as_sample(tmp_path):
    """EDM's network output is no diffusers prediction: the component gives D(x~; sigma) as ``sample``."""
    ckpt = torch.load(LEGACY / "pixel.ckpt", map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["prediction"] = "edm"  # the same network, preconditioned as EDM
    torch.save(ckpt, tmp_path / "edm.ckpt")
    out = tmp_path / "edm"
    assert export.main(["--ckpt_path", str(tmp_path / "edm.ckpt"), "--out", str(out)]) == 0
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "sample"
    check_schedulers(out, [("ddim", "DDIMScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler")])
