import pytest
import torch

from pyramid_dm.diffusion import build_schedule, q_sample
from pyramid_dm.diffusion.schedules import ContinuousLinearSchedule, LinearSchedule

ALL = [(name, steps) for name in ("linear", "cosine") for steps in (1000, None)]


@pytest.mark.parametrize(("name", "steps"), ALL)
def test_alpha_bar_decreases_and_alpha_sigma_are_unit_norm(name, steps):
    s = build_schedule(name, steps)
    t = torch.linspace(1e-3, 1.0, 2001)
    alpha, sigma = s.alpha_sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-6)
    ab = s.alpha_bar(t)
    assert (ab[1:] <= ab[:-1]).all() and ab[0] > 0.99 and ab[-1] < 1e-3
    assert s.alpha_sigma(torch.zeros(1)) == (torch.ones(1), torch.zeros(1))  # t = 0 is exactly clean


def test_discrete_linear_matches_ddpm_betas_and_its_continuous_limit():
    s = LinearSchedule(1000)
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    grid = (torch.arange(1000) + 1).float() / 1000
    assert torch.allclose(s.alpha_bar(grid).double(), s.alphas_cumprod, rtol=1e-5)
    c = ContinuousLinearSchedule()
    assert (c.log_snr(grid) - s.log_snr(grid)).abs().max() < 0.1  # same curve up to discretisation


@pytest.mark.parametrize(("name", "steps"), ALL)
def test_forward_noising_statistics(name, steps):
    torch.manual_seed(0)
    s = build_schedule(name, steps)
    x0 = torch.full((200_000, 1), 0.7)
    for tv in (0.1, 0.5, 0.9):
        t = torch.full((x0.shape[0],), tv)
        xt, eps = q_sample(x0, t, s)
        alpha, sigma = (v[0].item() for v in s.alpha_sigma(t[:1]))
        assert xt.mean().item() == pytest.approx(alpha * 0.7, abs=0.01)
        assert xt.std().item() == pytest.approx(sigma, rel=0.01)
        assert torch.allclose(xt, alpha * x0 + sigma * eps, atol=1e-5)


def test_discrete_training_times_lie_on_the_grid():
    s = build_schedule("cosine", 1000)
    t = s.sample_t(10_000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(t * 1000, (t * 1000).round(), atol=1e-3) and t.min() >= 1e-3 and t.max() <= 1
    c = build_schedule("cosine", None).sample_t(10_000)
    assert (c > 0).all() and (c <= 1).all() and len(c.unique()) > 9000


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'sigmoidal'"):
        build_schedule("sigmoidal")
