"""Samplers driven by the exact denoiser of Gaussian data: they must reproduce its mean and variance."""

import pytest
import torch

from pyramid_dm.diffusion import CountingDenoiser, build_schedule, ddim, ddpm, get_sampler, sampling_times

MU, STD = 0.5, 0.3


def gaussian_denoiser(schedule):
    """E[x0 | x_t] for x0 ~ N(MU, STD^2): MU + alpha STD^2 / (alpha^2 STD^2 + sigma^2) (x_t - alpha MU)."""

    def denoise(x, t):
        alpha, sigma = schedule.alpha_sigma(t.reshape(1))
        return MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (x - alpha * MU)

    return denoise


def noise(n=20_000):
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("name", "steps"), [("linear", 1000), ("cosine", 1000), ("cosine", None)])
@pytest.mark.parametrize("variance", ["large", "small"])
def test_ddpm_ancestral_reproduces_the_gaussian(name, steps, variance):
    s = build_schedule(name, steps)
    counter = CountingDenoiser(gaussian_denoiser(s))
    x = ddpm(counter, noise(), s, variance=variance, generator=torch.Generator().manual_seed(1))
    assert counter.nfe == 1000
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.03)


@pytest.mark.parametrize(("name", "steps"), [("linear", 1000), ("cosine", None)])
def test_ddim_converges_to_the_gaussian_as_steps_grow(name, steps):
    s = build_schedule(name, steps)
    errors = []
    for n in (10, 50, 250):
        x = ddim(gaussian_denoiser(s), noise(), s, n)
        assert x.mean().item() == pytest.approx(MU, abs=0.01)
        errors.append(abs(x.std().item() - STD))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01 * STD * 3


def test_ddim_eta_one_is_stochastic_and_matches_moments():
    s = build_schedule("linear", 1000)
    x = ddim(
        gaussian_denoiser(s), noise(), s, 1000, eta=1.0, generator=torch.Generator().manual_seed(2)
    )  # = DDPM "small"
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.03)
    y = ddim(gaussian_denoiser(s), noise(), s, 1000, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(x, y)


def test_deterministic_ddim_is_reproducible_and_counts_nfe():
    s = build_schedule("cosine", 1000)
    c = CountingDenoiser(gaussian_denoiser(s))
    a = ddim(c, noise(100), s, 20)
    assert c.nfe == 20 and torch.equal(a, ddim(gaussian_denoiser(s), noise(100), s, 20))


def test_sampling_times_follow_diffusers_spacings():
    s = build_schedule("linear", 1000)
    lead = sampling_times(s, 10, "leading")
    assert torch.allclose(lead[:-1] * 1000 - 1, torch.arange(900, -1, -100, dtype=torch.float64))
    trail = sampling_times(s, 10, "trailing")
    assert torch.allclose(trail[:-1] * 1000 - 1, torch.arange(999, 0, -100, dtype=torch.float64))
    assert lead[-1] == 0 and trail[-1] == 0


def test_bad_sampler_input_is_a_clear_error():
    s = build_schedule("cosine", 1000)
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        get_sampler("plms")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ddim(gaussian_denoiser(s), noise(10), s, 0)
    with pytest.raises(ValueError, match="exceeds the 1000 steps"):
        ddim(gaussian_denoiser(s), noise(10), s, 2000)
