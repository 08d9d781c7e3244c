"""Flow matching and Pyramidal Flow Matching: the formulas against the textbook, the sampler against diffusers, the
stage jump's statistics, and the bad settings that must be refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyramid_dm.diffusion import (
    Denoiser,
    DiffusionLoss,
    build_schedule,
    get_sampler,
    network_input,
    network_target,
    sample,
    sampling_sigmas,
)
from pyramid_dm.diffusion.pyramid import flow as pf
from pyramid_dm.diffusion.pyramid.layouts import PyramidFlowLayout
from pyramid_dm.diffusion.schedules.flow import flow_time, flux_shift, logit_normal_t, mode_t
from pyramid_dm.errors import UserError
from pyramid_dm.models import PixelDiffusion, PyramidDiffusion

TINY_UNET = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], norm_groups=8)
FLOW = dict(schedule="flow", num_timesteps=0, prediction="flow")


def shift_time(t, shift: float):
    """SD3's timestep shift written out (Sec. 5.3.2): t' = s t / (1 + (s - 1) t); the schedule must agree."""
    return shift * t / (1 + (shift - 1) * t)


# ---- the parameterization ------------------------------------------------------------------------------------------
def test_flow_input_target_and_denoiser_are_the_textbook_straight_path():
    """x_t = (1 - t) x0 + t eps, v = eps - x0, x0 = x_t - t v, with sigma~ = t / (1 - t) and x~ = x0 + sigma~ eps."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0.01, 0.2, 0.5, 0.7, 0.95, 0.999], dtype=torch.float64)
    sigma = t / (1 - t)
    tt = t.view(-1, 1, 1, 1).float()
    x_t = (1 - tt) * x0 + tt * eps
    assert torch.allclose(network_input("flow", x0, eps, sigma), x_t, atol=1e-6)
    assert torch.allclose(network_target("flow", x0, eps, sigma), eps - x0, atol=1e-5)
    seen = {}

    def oracle(x_in, c_noise):  # the exact velocity for this (x0, eps): what a perfect network returns
        seen["x_in"], seen["t"] = x_in, c_noise
        return eps - x0

    den = Denoiser(oracle, build_schedule("flow", 0), "flow")
    x_tilde = x0.double() + sigma.view(-1, 1, 1, 1) * eps.double()
    assert torch.allclose(den(x_tilde, sigma), x0.double(), atol=1e-5)
    assert torch.allclose(seen["x_in"], x_t, atol=1e-5) and torch.allclose(seen["t"].double(), t, atol=1e-6)
    windowed = Denoiser(oracle, build_schedule("flow", 0), "flow", time_window=(0.25, 0.75))
    windowed(x_tilde, sigma)
    assert torch.allclose(seen["t"].double(), 0.25 + 0.5 * t, atol=1e-6)  # the stage's place on the trajectory


def test_the_flow_schedule_its_shift_and_flux_shift_are_sd3s_formulas():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    plain, shifted = build_schedule("flow", 0), build_schedule("flow", 0, options={"shift": 3.0})
    assert torch.allclose(plain.sigma(t), t / (1 - t), rtol=1e-9)
    assert torch.allclose(flow_time(shifted.sigma(t)), 3 * t / (1 + 2 * t), rtol=1e-9)
    assert torch.allclose(shift_time(t, 3.0), 3 * t / (1 + 2 * t))
    assert torch.allclose(plain.t_of_sigma(plain.sigma(t)), t, atol=1e-9)
    assert plain.zero_terminal_snr and float(flow_time(plain.sigma(torch.ones(1)))) > 1 - 1e-6
    # FLUX: mu linear in the image's 2x2-patch count, from 0.5 at 256 patches to 1.15 at 4096 (diffusers'
    # calculate_shift); a 64x64 latent has 1024 patches
    mu = 0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256)
    assert flux_shift(64) == pytest.approx(math.exp(mu))
    flux = build_schedule("flow", 0, options={"shift": "flux"}, resolution=64)
    assert torch.allclose(flow_time(flux.sigma(t)), shift_time(t, math.exp(mu)), rtol=1e-9)


def test_training_time_densities_are_logit_normal_and_sd3_mode():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    t = logit_normal_t(u, 0.5, 0.8)
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.01) and float(logit.std()) == pytest.approx(0.8, abs=0.01)
    s = 1.29  # SD3, Eq. 20, written out
    expected = 1 - u.double() - s * (torch.cos(math.pi / 2 * u.double()) ** 2 - 1 + u.double())
    assert torch.allclose(mode_t(u, s), expected.clamp(1e-7, 1))
    # the loss passes each density its own parameters
    loss = DiffusionLoss.build("logit_normal", "uniform", {"logit_normal_mean": 0.5, "logit_normal_std": 0.8})
    t2, sigma = loss.noise_levels(build_schedule("flow", 0), u[:1000])
    assert torch.allclose(t2.double(), logit_normal_t(u[:1000], 0.5, 0.8), atol=1e-6)
    assert torch.allclose(flow_time(sigma), t2.double(), atol=1e-6)


# ---- samplers ------------------------------------------------------------------------------------------------------
def _velocity(x, t):  # any smooth field will do for parity: both sides integrate the same one
    w = torch.linspace(-0.5, 0.5, x.shape[1]).view(1, -1, 1, 1)
    return torch.tanh(x * w) * (1 + t.view(-1, 1, 1, 1)) + 0.5 * x


@pytest.mark.parametrize("shift", [1.0, 3.0, "flux"])
def test_flow_euler_matches_diffusers_flow_match_euler(shift):
    """diffusers' FlowMatchEulerDiscreteScheduler with the same velocity network (resolution-dependent shift through
    its dynamic shifting, mu = ln s): same grid, same samples, to 1e-4."""
    import diffusers

    s = flux_shift(32) if shift == "flux" else shift
    schedule = build_schedule("flow", 0, options={"shift": shift}, resolution=32)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(12, mu=math.log(s))
    ours = sampling_sigmas(schedule, 12, "flow")
    assert torch.allclose(flow_time(ours), scheduler.sigmas.double(), atol=1e-5)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x = z.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(_velocity(x, (t / 1000).expand(3)), t, x).prev_sample
    den = Denoiser(_velocity, schedule, "flow")
    assert (sample(den, z, schedule, "flow_euler", 12) - x).abs().max() < 1e-4


MU, STD = 0.5, 0.3


def _gaussian_denoiser(x, sigma, **cond):  # E[x0 | x~] for x0 ~ N(MU, STD^2)
    return MU + STD**2 / (STD**2 + torch.as_tensor(sigma, dtype=x.dtype) ** 2) * (x - MU)


def _gaussian_velocity(x_t, t):
    """The exact flow velocity of x0 ~ N(MU, STD^2): v = (x_t - E[x0 | x_t]) / t on the straight path."""
    t4 = t.double().view(-1, *([1] * (x_t.ndim - 1)))
    sigma = t4 / (1 - t4)
    x0 = _gaussian_denoiser(x_t.double() / (1 - t4), sigma)
    return ((x_t.double() - x0) / t4).float()


# first-order samplers need more steps for the same error (measured: the std within 3% at these counts)
STEPS = {"flow_euler": 200, "ddim": 200, "euler": 200, "ddpm": 200, "heun": 100, "dpmpp_2m": 40}


@pytest.mark.parametrize("sampler", list(STEPS))
def test_every_sampler_samples_a_flow_model_and_flow_euler_samples_a_diffusion_model(sampler):
    """A flow network (the exact velocity of Gaussian data) sampled by every sampler, and flow_euler sampling a
    sigma-space denoiser on a cosine schedule, reproduce the data's mean and standard deviation (3%)."""
    z = torch.randn(4000, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    schedule = build_schedule("flow", 0)
    den = Denoiser(_gaussian_velocity, schedule, "flow")
    x = sample(den, z, schedule, sampler, STEPS[sampler], generator=torch.Generator().manual_seed(1))
    assert float(x.mean()) == pytest.approx(MU, abs=0.01) and float(x.std()) == pytest.approx(STD, rel=0.03)
    if sampler == "flow_euler":
        cosine = build_schedule("cosine", 0)
        y = get_sampler("flow_euler")(_gaussian_denoiser, z.double(), sampling_sigmas(cosine, 200, "flow"))
        assert float(y.mean()) == pytest.approx(MU, abs=0.01) and float(y.std()) == pytest.approx(STD, rel=0.03)


# ---- Pyramidal Flow: windows, pairs and the jump -------------------------------------------------------------------
def test_stage_windows_follow_the_papers_corrected_start():
    windows = pf.stage_windows(pf.uniform_bounds(3))
    assert windows[0] == (pytest.approx(2 / 3), 1.0)
    # Pyramid-Flow's corrected_sigma with gamma = 1/3 (scheduling_flow_matching.py), written out
    for k, b in [(1, 2 / 3), (2, 1 / 3)]:
        ori = 1 - b
        corrected = ori / (math.sqrt(1 + 3) * (1 - ori) + ori)
        assert windows[k][1] == pytest.approx(1 - corrected) and windows[k][0] == pytest.approx(b - 1 / 3)


def test_stage_pairs_are_the_papers_start_and_end_points():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)
    levels = [F.avg_pool2d(x0, 4), F.avg_pool2d(x0, 2), x0]
    windows = pf.stage_windows([1.0, 0.6, 0.3, 0.0])
    for k, (e, a) in enumerate(windows):
        end, start = pf.stage_pair(levels, eps, k, (e, a))
        r = levels[k].shape[-1]
        eps_k = F.avg_pool2d(eps, 16 // r) * (16 // r)  # the full-resolution noise averaged, at unit variance
        coarse = F.interpolate(levels[k - 1], size=r, mode="nearest") if k else 0 * levels[k]
        assert torch.allclose(end, (1 - e) * levels[k] + e * eps_k, atol=1e-6)
        assert torch.allclose(start, (1 - a) * coarse + a * eps_k, atol=1e-6)


def test_renoising_gives_the_next_stages_start_marginal_with_white_noise():
    """From many draws of a stage's end point x_end = (1 - e) c + e eps at 8x8, the renoised 16x16 point equals
    (1 - a) Up(c) + a eps' with eps' white: mean 0, variance 1, no correlation inside 2x2 blocks (or across
    neighbouring blocks), and its 2x2 average is the coarse noise; the block noise alone has correlation -1/3."""
    g = torch.Generator().manual_seed(0)
    n, e = 20000, 0.4
    a = 2 * e / (1 + e)
    c = torch.randn(1, 1, 8, 8, generator=g).expand(n, -1, -1, -1)
    eps = torch.randn(n, 1, 8, 8, generator=g)
    start = pf.renoise((1 - e) * c + e * eps, e, g)
    resid = (start - (1 - a) * F.interpolate(c, size=16, mode="nearest")) / a
    assert float(resid.mean()) == pytest.approx(0, abs=0.01) and float(resid.var()) == pytest.approx(1, abs=0.01)

    def corr(x, dy, dx):
        p, q = x[..., : 16 - dy : 2, : 16 - dx : 2], x[..., dy::2, dx::2]
        return float(((p - p.mean()) * (q - q.mean())).mean() / (p.std() * q.std()))

    for dy, dx in [(0, 1), (1, 0), (1, 1), (0, 2)]:
        assert abs(corr(resid, dy, dx)) < 0.01, (dy, dx, corr(resid, dy, dx))
    assert torch.allclose(F.avg_pool2d(resid, 2) * 2, eps, atol=1e-5)  # the coarse noise, continued
    block = pf.block_noise((n, 1, 16, 16), g)
    assert float(block.var()) == pytest.approx(1, abs=0.01) and corr(block, 0, 1) == pytest.approx(-1 / 3, abs=0.01)
    assert float(F.avg_pool2d(block, 2).abs().max()) < 1e-5


def test_pyramid_flow_engine_trains_each_stage_on_its_pair_and_samples_coarse_to_fine():
    torch.manual_seed(0)
    model = PyramidDiffusion(16, 1, resolutions=[4, 8, 16], layout="pyramid_flow", unet=TINY_UNET, **FLOW)
    engine = model.engine
    assert [engine.geometry.context_channels(k) for k in range(3)] == [0, 0, 0]  # no context: one trajectory
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    u = torch.full((4, 3), 0.5)
    noise = [torch.randn(4, 1, r, r) for r in (4, 8, 16)]
    per_stage = [engine.loss(x, None, u, noise, levels=[k]) for k in range(3)]
    for k, got in enumerate(per_stage):  # the same loss written out from the pair: v-MSE at the stage's time
        end, start = pf.stage_pair(engine.encode(x), noise[-1], k, engine.layout.stage_windows(engine.num_levels)[k])
        den = engine.denoiser(k)
        t, sigma = engine.loss_fn.noise_levels(den.schedule, u[:, k])
        out = den.network(network_input("flow", end, start, sigma), sigma, t, level=k)
        assert torch.allclose(got, (out - (start - end)).pow(2).flatten(1).mean(1), atol=1e-5)
    assert (
        engine.denoiser(0).time_window == engine.layout.stage_windows(engine.num_levels)[0]
        and not engine.denoiser(0).clip_x0
    )
    images, levels = engine.sample(3, sampler="flow_euler", steps=[2, 2, 2], return_levels=True)
    assert [tuple(z.shape) for z in levels] == [(3, 1, r, r) for r in (4, 8, 16)] and images.shape == (3, 1, 16, 16)


def test_bad_flow_and_pyramid_flow_settings_are_named():
    with pytest.raises(UserError, match="needs schedule 'flow' and prediction 'flow'"):
        PyramidDiffusion(16, 1, resolutions=[4, 8, 16], layout="pyramid_flow", unet=TINY_UNET)
    with pytest.raises(UserError, match="twice the resolution of the one before"):
        PyramidDiffusion(16, 1, resolutions=[4, 16], layout="pyramid_flow", unet=TINY_UNET, **FLOW)
    with pytest.raises(UserError, match="must start at 1 .* and end at 0"):
        PyramidDiffusion(
            16, 1, resolutions=[8, 16], layout="pyramid_flow", stage_bounds=[1, 0.5, 0.1], unet=TINY_UNET, **FLOW
        )
    with pytest.raises(UserError, match="must decrease strictly"):
        PyramidDiffusion(
            16, 1, resolutions=[4, 8, 16], layout="pyramid_flow", stage_bounds=[1, 0.3, 0.5, 0], unet=TINY_UNET, **FLOW
        )
    with pytest.raises(UserError, match="3 stages need 4 stage bounds"):
        PyramidDiffusion(
            16, 1, resolutions=[4, 8, 16], layout="pyramid_flow", stage_bounds=[1, 0.5, 0], unet=TINY_UNET, **FLOW
        )
    with pytest.raises(UserError, match=r"stage_bounds \[1, 0.5, 0\] apply to layout pyramid_flow, not 'native'"):
        PyramidDiffusion(16, 1, resolutions=[8, 16], stage_bounds=[1, 0.5, 0], unet=TINY_UNET)
    with pytest.raises(UserError, match="flow schedule is continuous"):
        PixelDiffusion(16, 1, schedule="flow", prediction="flow", unet=TINY_UNET)
    with pytest.raises(UserError, match="cannot be used with the zero-terminal-SNR schedule"):
        PixelDiffusion(16, 1, schedule="flow", num_timesteps=0, prediction="eps", unet=TINY_UNET)
    with pytest.raises(UserError, match=r"schedule_options.shift must be a number > 0 or 'flux'"):
        PixelDiffusion(16, 1, schedule_options={"shift": -2}, unet=TINY_UNET, **FLOW)
    with pytest.raises(ValueError, match="time window applies to flow networks only"):
        Denoiser(lambda x, c: x, build_schedule("cosine", 0), "v", time_window=(0, 1))
    with pytest.raises(ValueError, match="at least 2 stages"):
        PyramidFlowLayout().geometry([(1, 8, 8)])
