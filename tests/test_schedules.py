import math

import pytest
import torch

from pyramid_dm.diffusion import TRAINING_TIMES, build_schedule, q_sample, resolution_shift
from pyramid_dm.diffusion.schedules.base import ContinuousLinearSchedule, LinearSchedule, rescale_zero_terminal_snr
from pyramid_dm.diffusion.training.times import LogNormalSigma

ALL = [(name, steps) for name in ("linear", "cosine", "sigmoid") for steps in (1000, None)]


@pytest.mark.parametrize(("name", "steps"), ALL)
def test_alpha_bar_decreases_and_alpha_sigma_are_unit_norm(name, steps):
    s = build_schedule(name, steps)
    t = torch.linspace(1e-3, 1.0, 2001, dtype=torch.float64)
    alpha, sigma = s.vp_alpha_sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    ab = s.alpha_bar(t)
    assert (ab[1:] <= ab[:-1]).all() and ab[0] > 0.99 and ab[-1] < 1e-3
    a0, s0 = s.vp_alpha_sigma(torch.zeros(1))
    assert a0.item() == 1 and s0.item() == 0  # t = 0 is exactly clean


@pytest.mark.parametrize(("name", "steps"), [*ALL, ("edm", None)])
def test_time_of_sigma_inverts_sigma_of_time(name, steps):
    s = build_schedule(name, steps)
    t = torch.linspace(0.01, 0.99, 97, dtype=torch.float64)
    assert torch.allclose(s.t_of_sigma(s.sigma(t)), t, atol=1e-9)
    assert s.t_of_sigma_value(float(s.sigma(t[40:41]))) == pytest.approx(t[40].item(), abs=1e-9)


def test_discrete_linear_matches_ddpm_betas_and_its_continuous_limit():
    s = LinearSchedule(1000)
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    grid = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    assert torch.allclose(s.alpha_bar(grid), s.alphas_cumprod, rtol=1e-12)
    c = ContinuousLinearSchedule()
    assert (c.log_snr(grid) - s.log_snr(grid)).abs().max() < 0.1  # same curve up to discretisation


def test_sigmoid_table_matches_lucidrains_formula():
    # denoising-diffusion-pytorch sigmoid_beta_schedule(T, start=-3, end=3, tau=1): v_start = sigmoid(start / tau) ...
    T = 1000
    t = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    v_start, v_end = torch.tensor(-3.0).double().sigmoid(), torch.tensor(3.0).double().sigmoid()
    ac = (-((t * 6 - 3) / 1).sigmoid() + v_end) / (v_end - v_start)
    ac = ac / ac[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(0, 0.999)
    assert torch.allclose(build_schedule("sigmoid", T).betas, betas, atol=1e-10)


def test_zero_terminal_snr_matches_diffusers_and_keeps_the_first_step():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

    s = build_schedule("linear", 1000, zero_terminal_snr=True)
    theirs = torch.cumprod(1 - diffusers_rescale(LinearSchedule(1000).betas.float()).double(), 0)
    assert torch.allclose(s.alphas_cumprod, theirs, atol=1e-6)
    assert s.alphas_cumprod[-1] == 0 and s.alphas_cumprod[0] == pytest.approx(LinearSchedule(1000).alphas_cumprod[0])
    assert s.zero_terminal_snr and not LinearSchedule(1000).zero_terminal_snr
    c = build_schedule("cosine", None, zero_terminal_snr=True)
    assert c.zero_terminal_snr and c.alpha_bar(torch.tensor([1e-6])).item() == pytest.approx(1, abs=1e-4)
    assert torch.equal(rescale_zero_terminal_snr(torch.tensor([0.9, 0.5, 0.1]))[-1], torch.tensor(0.0).double())


def test_resolution_shift_adds_2_log_ratio_to_log_snr():
    base = build_schedule("cosine", None)
    shifted = build_schedule("cosine", None, log_snr_shift=resolution_shift(128, 64))
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    assert torch.allclose(shifted.log_snr(t) - base.log_snr(t), torch.full_like(t, 2 * math.log(0.5)))
    assert resolution_shift(32, 64) == pytest.approx(2 * math.log(2))  # smaller images: less noise at the same t
    with pytest.raises(ValueError, match="resolutions must be >= 1"):
        resolution_shift(0, 64)


@pytest.mark.parametrize(("name", "steps"), ALL)
def test_forward_noising_statistics(name, steps):
    torch.manual_seed(0)
    s = build_schedule(name, steps)
    x0 = torch.full((200_000, 1), 0.7)
    for tv in (0.1, 0.5, 0.9):
        t = torch.full((x0.shape[0],), tv)
        xt, eps = q_sample(x0, t, s)
        alpha, sigma = (v[0].item() for v in s.vp_alpha_sigma(t[:1]))
        assert xt.mean().item() == pytest.approx(alpha * 0.7, abs=0.01)
        assert xt.std().item() == pytest.approx(sigma, rel=0.01)
        assert torch.allclose(xt, alpha * x0 + sigma * eps, atol=1e-5)


def test_discrete_training_times_lie_on_the_grid():
    s = build_schedule("cosine", 1000)
    t = s.sample_t(10_000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(t * 1000, (t * 1000).round(), atol=1e-3) and t.min() >= 1e-3 and t.max() <= 1
    c = build_schedule("cosine", None).sample_t(10_000)
    assert (c > 0).all() and (c <= 1).all() and len(c.unique()) > 9000


def test_edm_lognormal_training_noise_has_the_stated_moments():
    s = build_schedule("edm", None)
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    t, sigma = LogNormalSigma(-1.2, 1.2).draw(s, u)
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.01)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.01)
    assert (t >= 0).all() and (t <= 1).all()


def test_unknown_schedule_or_noise_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'sigmoidal'"):
        build_schedule("sigmoidal")
    with pytest.raises(ValueError, match="zero_terminal_snr does not apply"):
        build_schedule("edm", None, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="unknown training noise 'uniform'"):
        TRAINING_TIMES.lookup("uniform")
