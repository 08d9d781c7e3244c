"""The engine's parts: one D(x; sigma) path for the loss and the samplers, the layouts' math (Frido's context lerp and
snapping, conditioning augmentation at sampling time), clipping, batched guidance, and the package's structure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import default_dtype

from pyramid_dm.diffusion import (
    PREDICTIONS,
    ClassifierFreeGuidance,
    Denoiser,
    DiffusionLoss,
    FridoLayout,
    LevelGeometry,
    NativeLayout,
    build_schedule,
)
from pyramid_dm.engine import DiffusionEngine, load_engine
from pyramid_dm.engine.wrappers import Count, Guidance
from pyramid_dm.models import PixelDiffusion, PyramidDiffusion

TINY_UNET = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], norm_groups=8)
PACKAGE = Path(__file__).resolve().parents[1] / "pyramid_dm"


def _randomised(model):
    """Weights away from the zero-initialised output layers, so that outputs depend on the inputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim and not p.abs().max():
                p.normal_(0, 0.05)
    return model


# ---- the loss is computed through the samplers' denoiser ------------------------------------------------------------
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting", ["uniform", "min_snr", "edm", "soft_min_snr"])
def test_the_loss_through_d_on_the_x0_scale_equals_the_network_target_form(prediction, weighting):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1))
    schedule = build_schedule("edm" if prediction == "edm" else "cosine", None)
    den = Denoiser(lambda x, c_noise: net(x) * (1 + c_noise.view(-1, 1, 1, 1)), schedule, prediction)
    loss = DiffusionLoss.build("schedule", weighting)
    x0, noise, u = torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8), torch.rand(16) * 0.9 + 0.05
    network_form = loss.level_loss(den, x0, noise, u)
    x0_form = loss.x0_level_loss(den, x0, noise, u)
    assert torch.allclose(network_form.double(), x0_form.double(), rtol=1e-3, atol=1e-6), (network_form, x0_form)
    assert network_form.std() > 0


def test_level_weights_are_normalised_and_checked():
    assert torch.allclose(
        DiffusionLoss.build("schedule", "uniform", level_weights=[1, 3]).weights(2), torch.tensor([0.25, 0.75])
    )
    with pytest.raises(ValueError, match="level_weights must be >= 0"):
        DiffusionLoss.build("schedule", "uniform", level_weights=[0, 0])


# ---- Denoiser against the textbook parameterizations, written out -------------------------------------------------
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_denoiser_is_the_textbook_x0_estimate(prediction):
    """x_t = alpha_t x0 + sigma_t eps (VP), x~ = x_t / alpha_t; F is the network output:
    eps: x0 = (x_t - sigma_t F) / alpha_t; x0: x0 = F; v: x0 = alpha_t x_t - sigma_t F;
    edm (Karras et al. 2022, Table 1): D = sd^2/(s^2+sd^2) x~ + s sd/sqrt(s^2+sd^2) F(x~/sqrt(s^2+sd^2));
    flow (rectified flow): x_t = (1 - t) x0 + t eps with t = s / (1 + s), x0 = x_t - t F."""
    g = torch.Generator().manual_seed(1)
    x_tilde = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    sig = torch.tensor([0.05, 0.3, 1.0, 4.0, 20.0], dtype=torch.float64)  # sigma~ = sigma_t / alpha_t
    F = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    den = Denoiser(
        lambda x_in, c_noise: F,
        build_schedule({"edm": "edm", "flow": "flow"}.get(prediction, "cosine"), None),
        prediction,
    )
    s = sig.view(-1, 1, 1, 1)
    alpha_t, sigma_t = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    x_t = alpha_t * x_tilde
    sd = 0.5
    want = {
        "eps": (x_t - sigma_t * F) / alpha_t,
        "x0": F,
        "v": alpha_t * x_t - sigma_t * F,
        "edm": sd**2 / (s**2 + sd**2) * x_tilde + s * sd / (s**2 + sd**2).sqrt() * F,
        "flow": x_tilde / (1 + s) - s / (1 + s) * F,
    }[prediction]
    assert torch.allclose(den(x_tilde, sig), want, atol=1e-10)


def test_pixel_space_denoisers_clip_x0_and_latent_ones_do_not():
    big = lambda x_in, c_noise: torch.full_like(x_in, 5.0)  # noqa: E731
    schedule = build_schedule("cosine", None)
    x, sigma = torch.zeros(2, 1, 2, 2), torch.tensor(1.0)
    assert Denoiser(big, schedule, "x0", clip_x0=True)(x, sigma).max() == 1.0
    assert Denoiser(big, schedule, "x0", clip_x0=False)(x, sigma).max() == 5.0
    pixel = PixelDiffusion(8, 1, unet=TINY_UNET).engine
    assert pixel.denoiser().clip_x0 and pixel.first_stage.pixel_space


# ---- layouts -------------------------------------------------------------------------------------------------------
def test_snapping_to_a_level_grid_is_average_pooling():
    geometry = LevelGeometry.of([(1, 4, 4), (1, 8, 8)], [8, 8])  # Frido: both levels on the finest grid
    z = torch.randn(3, 1, 8, 8)
    snapped = geometry.from_grid(z, 0)
    assert torch.allclose(snapped, z.reshape(3, 1, 4, 2, 4, 2).mean(dim=(3, 5)))  # mean of each 2x2 block
    assert torch.equal(geometry.from_grid(z, 1), z)
    coarse = torch.randn(3, 1, 4, 4)
    up = geometry.to_grid(coarse, 0)
    assert torch.equal(up, coarse.repeat_interleave(2, -1).repeat_interleave(2, -2))  # nearest upsampling


def test_frido_lerps_the_context_in_training_only_and_shares_one_t():
    model = _randomised(PyramidDiffusion(8, 1, resolutions=[4, 8], layout="frido", unet=TINY_UNET, frido_noise_mix=0.2))
    engine = model.engine
    assert isinstance(engine.layout, FridoLayout) and engine.geometry.grid_sizes == (8, 8)
    coarse = [torch.randn(2, 1, 4, 4)]
    up = coarse[0].repeat_interleave(2, -1).repeat_interleave(2, -2)
    aug_t, noise = engine.layout.training_augmentation(engine.geometry, 2, torch.Generator().manual_seed(0))
    cond = engine.level_conditioning(1, coarse, aug_t, noise[1])
    assert torch.allclose(cond["context"], 0.8 * up + 0.2 * noise[1]) and "aug_t" not in cond  # (1 - tau) c + tau eps
    assert torch.equal(engine.level_conditioning(1, coarse)["context"], up)  # sampling: the clean context
    assert engine.layout.training_u(5, 2).shape == (5,)  # one t for every level
    assert NativeLayout().training_u(5, 2).shape == (5, 2)


def test_sample_augmentation_noises_the_context_the_network_sees_when_sampling():
    seen = []

    def run(aug):
        m = _randomised(PyramidDiffusion(8, 1, resolutions=[4, 8], unet=TINY_UNET, sample_augmentation=aug))
        m.engine.net.register_forward_hook(lambda mod, a, kw, out: seen.append(kw), with_kwargs=True)
        seen.clear()
        g = torch.Generator().manual_seed(0)
        _, (coarse, _) = m.engine.sample(2, "ddim", 2, generator=g, return_levels=True)
        fine_calls = [kw for kw in seen if kw["level"] == 1]
        return coarse, fine_calls

    coarse, calls = run(0.0)
    up = coarse.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert calls and all("aug_t" not in kw and torch.allclose(kw["context"], up) for kw in calls)
    coarse, calls = run(0.3)
    up = coarse.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert all(torch.allclose(kw["aug_t"], torch.full((2,), 0.3)) for kw in calls)
    assert all((kw["context"] - up).abs().mean() > 0.05 for kw in calls)  # alpha c + sigma eps, not c


# ---- guidance, batched ---------------------------------------------------------------------------------------------
def test_batched_guidance_equals_two_calls_and_counts_two_evaluations():
    model = _randomised(PixelDiffusion(8, 1, num_classes=3, unet=TINY_UNET)).eval().double()  # float64: see below
    engine, labels = model.engine, torch.tensor([0, 1, 2, 0])
    out = {}
    for batched in (True, False):
        count, shapes = Count(), []
        engine.net.register_forward_pre_hook(lambda mod, args, shapes=shapes: shapes.append(args[0].shape[0]))
        g = torch.Generator().manual_seed(0)
        with default_dtype(torch.float64):
            wrappers = [Guidance(3.0, batched=batched), count]
            out[batched] = engine.sample(4, "ddim", 3, labels=labels, generator=g, wrappers=wrappers)
        engine.net._forward_pre_hooks.clear()
        assert count.nfe == [6] and set(shapes) == ({8} if batched else {4})
    # one batch of 8 and two of 4 round differently (and differently per CPU and thread count); in float64 that
    # leaves them ~1e-16 apart, so a tolerance far below any real difference holds on every machine
    assert out[True].dtype == torch.float64 and torch.allclose(out[True], out[False], atol=1e-9)
    with pytest.raises(ValueError, match="differs between the branches"):
        ClassifierFreeGuidance(lambda x, s, **c: x, 2.0, {"level": 1}, batched=True)(torch.zeros(2, 1), 1.0, level=0)


# ---- the engine without Lightning ----------------------------------------------------------------------------------
def test_an_engine_samples_and_trains_without_lightning(tmp_path):
    model = _randomised(PixelDiffusion(8, 1, num_classes=3, unet=TINY_UNET))
    engine = model.engine
    assert isinstance(engine, DiffusionEngine) and not any("lightning" in type(m).__module__ for m in engine.modules())
    loss, per_level = engine.training_loss(torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, -1]))
    loss.backward()
    assert list(per_level) == [0] and all(p.grad is not None for p in engine.net.parameters())
    assert torch.allclose(per_level[0], loss.detach())  # one level: its loss is the loss
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 0}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "m.ckpt")
    loaded = load_engine(tmp_path / "m.ckpt")
    assert torch.equal(next(loaded.net.parameters()), next(model.ema.module.parameters()))  # the EMA weights
    assert loaded.sample(2, "ddim", 2, labels=torch.tensor([0, 1])).shape == (2, 1, 8, 8)


# ---- structure: the rules the architecture keeps ------------------------------------------------------------------
def _sources():
    return {p: p.read_text() for p in PACKAGE.rglob("*.py")}


def test_no_file_over_400_lines_and_no_untyped_option_lookups():
    for path, text in _sources().items():
        assert len(text.splitlines()) <= 400, f"{path} has {len(text.splitlines())} lines"
        assert "hparams.get(" not in text, f"{path} reads an option through hparams.get"
        if path.name != "layouts.py":
            assert not re.search(r"layout\s*==", text), f"{path} tests the layout by name"


def test_eval_and_models_do_not_import_each_other():
    for path, text in _sources().items():
        rel = path.relative_to(PACKAGE).parts
        if rel[0] == "eval":
            assert not re.search(r"from \.\.models|pyramid_dm\.models", text), path
        if rel[0] == "models":
            assert not re.search(r"from \.\.eval|pyramid_dm\.eval", text), path
        if rel[0] in ("diffusion", "nets", "engine", "stages"):
            assert "import lightning" not in text and "from lightning" not in text, f"{path} imports Lightning"


def test_the_engine_and_the_math_import_no_lightning():
    import subprocess
    import sys

    code = (
        "import sys, pyramid_dm.engine, pyramid_dm.diffusion, pyramid_dm.stages, pyramid_dm.nets;"
        "import pyramid_dm.checkpoints;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'wandb'));"
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
