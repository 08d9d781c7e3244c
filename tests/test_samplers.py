"""Samplers against exact answers: closed-form denoisers of Gaussian and Gaussian-mixture data, and diffusers."""

import math

import pytest
import torch

from pyramid_dm.diffusion import (
    SAMPLERS,
    CountingDenoiser,
    Denoiser,
    build_schedule,
    get_sampler,
    nfe,
    sample,
    sampling_sigmas,
    sampling_times,
    steps_for_nfe,
)

MU, STD = 0.5, 0.3
DETERMINISTIC = ["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m"]
SCHEDULE = build_schedule("linear", 1000)


def gaussian(x, sigma, **cond):
    """E[x0 | x~] for x0 ~ N(MU, STD^2) and x~ = x0 + sigma eps."""
    return MU + STD**2 / (STD**2 + float(sigma) ** 2) * (x - MU)


MEANS = torch.tensor([[-1.0, -0.5], [0.8, 0.6], [0.2, -1.0]], dtype=torch.float64)
WEIGHTS, STDS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.3, 0.1], dtype=torch.float64)


def mixture(x, sigma, **cond):
    """E[x0 | x~] for a 2-d mixture of isotropic Gaussians: posterior-weighted per-component Gaussian denoisers."""
    var = STDS**2 + float(sigma) ** 2
    d2 = ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)
    resp = torch.softmax(WEIGHTS.log() - d2 / (2 * var) - var.log(), -1)  # d / 2 * log var with d = 2
    return (resp[..., None] * (MEANS[None] + (STDS**2 / var)[None, :, None] * (x[:, None, :] - MEANS[None]))).sum(1)


def noise(n=2000, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def run(name, denoiser, n_or_steps, z, by="nfe", grid=None, **opts):
    steps = steps_for_nfe(name, n_or_steps) if by == "nfe" else n_or_steps
    return get_sampler(name)(denoiser, z, sampling_sigmas(SCHEDULE, steps, grid or SAMPLERS[name].grid), **opts)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_to_the_exact_gaussian_flow(name):
    """The probability-flow ODE of Gaussian data is linear: x~(s) - MU = (x~(s0) - MU) sqrt((STD^2 + s^2) /
    (STD^2 + s0^2)). Every grid ends with x0 = D(x~, sigma_min): the exact answer is that map to sigma_min, then D."""
    z = noise(500, 4)
    errors = []
    for steps in (10, 40, 160):
        sigmas = sampling_sigmas(SCHEDULE, steps, SAMPLERS[name].grid)
        s0, s_min = float(sigmas[0]), float(sigmas[-2])
        x_start = z.double() * math.sqrt(1 + s0**2)
        exact = gaussian(MU + (x_start - MU) * math.sqrt((STD**2 + s_min**2) / (STD**2 + s0**2)), s_min)
        errors.append((get_sampler(name)(gaussian, z, sigmas) - exact).abs().max().item())
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < errors[0] / 10, errors  # 16x the steps: at least first-order convergence (16^0.83)


@pytest.fixture(scope="module")
def mixture_reference():
    """A high-accuracy solution: Heun with 2000 steps, checked against DPM-Solver++(3M) with 2000 steps."""
    z = noise()
    ref = run("heun", mixture, 2000, z, by="steps", grid="karras")
    other = run("dpmpp_3m", mixture, 2000, z, by="steps", grid="karras")
    assert (ref - other).norm(dim=1).mean() < 2e-5
    return z, ref


def _mixture_error(name, budget, mixture_reference, grid="karras"):
    z, ref = mixture_reference
    counter = CountingDenoiser(mixture)
    out = run(name, counter, budget, z, grid=grid)
    assert counter.nfe <= budget
    return (out - ref).norm(dim=1).mean().item()


def test_higher_order_solvers_beat_first_order_ones_at_equal_nfe(mixture_reference):
    """At 50 and 100 NFE on the same (Karras) grid: DPM-Solver++(2M/3M) and Heun well below DDIM and Euler."""
    for budget in (50, 100):
        err = {name: _mixture_error(name, budget, mixture_reference) for name in DETERMINISTIC}
        first_order = min(err["ddim"], err["euler"])
        for name in ("heun", "dpmpp_2m", "dpmpp_3m"):
            assert err[name] < 0.5 * first_order, (budget, err)


def test_convergence_orders_match_theory(mixture_reference):
    """Error ~ NFE^-p: p ~ 1 for Euler/DDIM, p ~ 2 for Heun and DPM-Solver++(2M), measured between 25 and 100 NFE."""

    def order(name):
        lo, hi = (_mixture_error(name, n, mixture_reference) for n in (25, 100))
        return math.log(lo / hi) / math.log(4)

    assert 0.8 < order("euler") < 1.3 and 0.8 < order("ddim") < 1.3
    assert order("dpmpp_2m") > 1.7 and order("heun") > 1.7


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("ddpm", {"variance": "large"}),
        ("ddpm", {"variance": "small"}),
        ("ddim", {"eta": 1.0}),
        ("euler", {"churn": 40.0}),
        ("heun", {"churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}),
    ],
)
def test_stochastic_samplers_reproduce_the_gaussian_moments(name, opts):
    z = noise(20_000, 1)
    steps = 200 if name == "heun" else 1000
    a = run(name, gaussian, steps, z, by="steps", generator=torch.Generator().manual_seed(1), **opts)
    assert a.mean().item() == pytest.approx(MU, abs=0.01)
    assert a.std().item() == pytest.approx(STD, rel=0.03)
    b, c, d = (
        run(name, gaussian, 20, z[:100], by="steps", generator=torch.Generator().manual_seed(seed), **opts)
        for seed in (1, 1, 2)
    )
    assert torch.equal(b, c) and not torch.allclose(b, d)  # seeded noise: reproducible, and really random


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_is_counted_exactly(name):
    for steps in (1, 2, 7):
        counter = CountingDenoiser(gaussian)
        out = sample(counter, noise(8), SCHEDULE, name, steps, generator=torch.Generator().manual_seed(0))
        assert counter.nfe == nfe(name, steps) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert nfe("heun", steps_for_nfe("heun", 20)) == 19


# ---- cross-check against diffusers (test-only dependency) ----------------------------------------------------------
def _eps_model(x_t, k):
    """An eps-network in diffusers' convention (VP input, integer or fractional timestep k): the exact eps of the
    mixture at the noise level of timestep k."""
    sigma = SCHEDULE.sigma((torch.as_tensor(k, dtype=torch.float64).reshape(1) + 1) / 1000)[0]
    x = x_t.double() * (1 + sigma**2).sqrt()
    return (x - mixture(x, sigma)) / sigma


def _diffusers_run(scheduler, steps, z):
    scheduler.set_timesteps(steps)
    x = z.double() * scheduler.init_noise_sigma
    for k in scheduler.timesteps:
        x = scheduler.step(_eps_model(scheduler.scale_model_input(x, k), k), k, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [8, 25])
@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        ("ddim", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
        ("euler", "EulerDiscreteScheduler", {}),
        ("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
        ("heun", "HeunDiscreteScheduler", {}),
        ("heun", "HeunDiscreteScheduler", {"use_karras_sigmas": True}),
        ("dpmpp_2m", "DPMSolverMultistepScheduler", {"solver_order": 2}),
        ("dpmpp_3m", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ],
)
def test_samplers_match_diffusers_schedulers(ours, theirs, kwargs, steps):
    import diffusers

    scheduler = getattr(diffusers, theirs)(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, **kwargs
    )
    z = noise(500)
    expected = _diffusers_run(scheduler, steps, z)
    if ours == "ddim":  # diffusers keeps timesteps; we keep noise levels: timestep k sits at t = (k + 1) / T
        sigmas = sampling_sigmas(SCHEDULE, steps, "leading")
        assert torch.allclose(sigmas[:-1], SCHEDULE.sigma((scheduler.timesteps.double() + 1) / 1000))
    else:
        sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float64)
        sigmas = torch.cat([sigmas[:1], sigmas[1::2]]) if ours == "heun" else sigmas  # Heun repeats each level
    sigma_scale = 1.0 if ours in ("ddim", "dpmpp_2m", "dpmpp_3m") else scheduler.init_noise_sigma
    start = z * sigma_scale / math.sqrt(1 + float(sigmas[0]) ** 2) if sigma_scale != 1.0 else z
    den = Denoiser(lambda x_t, t: _eps_model(x_t, t.double()[0] * 1000 - 1).to(x_t.dtype), SCHEDULE, "eps")
    counter = CountingDenoiser(den)
    got = get_sampler(ours)(counter, start, sigmas)
    assert (got - expected).abs().max().item() <= 1e-4
    assert counter.nfe == nfe(ours, len(sigmas) - 1)


def test_discretizations_match_diffusers():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    lead = sampling_times(SCHEDULE, 10, "leading")
    assert torch.allclose(lead[:-1] * 1000 - 1, torch.arange(900, -1, -100, dtype=torch.float64))
    trail = sampling_times(SCHEDULE, 10, "trailing")
    assert torch.allclose(trail[:-1] * 1000 - 1, torch.arange(999, 0, -100, dtype=torch.float64))
    for spacing in ("leading", "trailing"):
        d = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        d.set_timesteps(13)
        assert torch.equal(sampling_times(SCHEDULE, 13, spacing)[:-1] * 1000 - 1, d.timesteps.double())
    e = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="linear", use_karras_sigmas=True)
    e.set_timesteps(12)
    assert torch.allclose(sampling_sigmas(SCHEDULE, 12, "karras"), e.sigmas.double(), rtol=2e-4)  # diffusers: float32
    logsnr = sampling_sigmas(SCHEDULE, 12, "logsnr")[:-1].log()
    assert torch.allclose(logsnr.diff(), logsnr.diff()[:1].expand(11))  # even steps in log-SNR


def test_bad_sampler_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        get_sampler("plms")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sample(gaussian, noise(10), SCHEDULE, "ddim", 0)
    with pytest.raises(ValueError, match="exceeds the 1000 steps"):
        sample(gaussian, noise(10), SCHEDULE, "ddim", 2000)
    with pytest.raises(ValueError, match="unknown discretization 'cosine'"):
        sample(gaussian, noise(10), SCHEDULE, "ddim", 10, discretization="cosine")
    with pytest.raises(ValueError, match="sampler 'dpmpp_2m' does not take these options: \\['eta'\\]"):
        sample(gaussian, noise(10), SCHEDULE, "dpmpp_2m", 10, eta=0.5)
    with pytest.raises(ValueError, match="decreasing 1-d grid"):
        get_sampler("euler")(gaussian, noise(10), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="DDIM eta must be >= 0"):
        sample(gaussian, noise(10), SCHEDULE, "ddim", 10, eta=-1)
