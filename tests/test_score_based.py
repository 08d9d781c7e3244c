"""Score-based samplers (annealed Langevin dynamics, predictor-corrector, the reverse SDE), the VE/VP SDEs and
classifier guidance, checked with exact scores of Gaussians and Gaussian mixtures (no network)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from pyramid_dm.diffusion import build_schedule, sampling_sigmas
from pyramid_dm.diffusion.guidance.classifier import ClassifierGuidance
from pyramid_dm.diffusion.samplers.core import SAMPLERS, nfe, steps_for_nfe

SHAPE = (1, 16, 16)  # 256 dimensions: the corrector's per-sample norms are sharp (chi with 256 degrees of freedom)


class Mixture:
    """Isotropic Gaussian mixture sum_k pi_k N(mu_k, s^2 I) in sigma space: exact D(x~; sigma) and p(k | x~, sigma)."""

    def __init__(self, means: list[float], s: float, weights: list[float] | None = None):
        self.mu = torch.tensor(means, dtype=torch.float64)
        self.s2 = s**2
        self.pi = torch.tensor(weights or [1 / len(means)] * len(means), dtype=torch.float64)

    def log_posterior(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """log p(k | x~) for every k, (B, K)."""
        var = self.s2 + float(sigma) ** 2
        d2 = torch.stack([(x.double() - m).flatten(1).pow(2).sum(1) for m in self.mu], 1)
        return torch.log_softmax(self.pi.log() - d2 / (2 * var), dim=1)

    def denoiser(self, x, sigma, **_):
        var = self.s2 + float(sigma) ** 2
        w = self.log_posterior(x, sigma).exp()
        shrunk = [m + self.s2 / var * (x - m) for m in self.mu]
        return sum(w[:, k].reshape(-1, 1, 1, 1) * shrunk[k] for k in range(len(self.mu)))

    def moments(self) -> tuple[float, float]:
        mean = float((self.pi * self.mu).sum())
        return mean, float(self.s2 + (self.pi * (self.mu - mean) ** 2).sum())


def draw(sampler: str, target: Mixture, steps: int, n: int = 500, seed: int = 0, schedule="ve", **options):
    g = torch.Generator().manual_seed(seed)
    sigmas = sampling_sigmas(build_schedule(schedule, 0), steps, "logsnr")
    return SAMPLERS[sampler](target.denoiser, torch.randn(n, *SHAPE, generator=g), sigmas, generator=g, **options)


@pytest.mark.parametrize(
    "sampler, steps, options",
    [
        ("ald", 60, {"n_steps_each": 30}),  # Langevin mixes slowly: fewer steps per level stay too wide
        ("pc", 100, {}),
        ("pc", 100, {"predictor": "euler_maruyama"}),
        ("euler_maruyama", 200, {}),
    ],
)
@pytest.mark.parametrize("means", [[0.7], [-1.0, 1.0]], ids=["gaussian", "mixture"])
def test_score_samplers_reproduce_the_target_mean_and_variance(sampler, steps, options, means):
    target = Mixture(means, s=0.5, weights=[0.3, 0.7] if len(means) == 2 else None)
    x = draw(sampler, target, steps, **options)
    mean, var = target.moments()
    assert abs(float(x.mean()) - mean) < 0.05
    # ALD's finite Langevin steps leave it ~3-4% too wide here (measured: 4.3% Gaussian, 2.8% mixture); the SDE
    # samplers are within 2%
    assert abs(float(x.var()) / var - 1) < (0.08 if sampler == "ald" else 0.05), (float(x.var()), var)


def test_the_corrector_lowers_the_error_of_the_predictor_alone_at_equal_predictor_steps():
    target = Mixture([0.7], s=0.5)
    err = {}
    for k in (0, 1, 3):
        x = draw("pc", target, 10, corrector_steps=k)
        err[k] = abs(float(x.std()) - 0.5)
    assert err[3] < err[1] < err[0], err
    assert err[3] < 0.7 * err[0]


def test_nfe_counts_predictor_and_corrector_calls():
    calls = []
    target = Mixture([0.0], s=0.5)

    def counting(x, sigma, **_):
        calls.append(1)
        return target.denoiser(x, sigma)

    sigmas = sampling_sigmas(build_schedule("ve", 0), 7, "logsnr")
    for name, options in [("pc", {"corrector_steps": 2}), ("ald", {"n_steps_each": 3}), ("euler_maruyama", {})]:
        calls.clear()
        SAMPLERS[name](counting, torch.randn(2, *SHAPE), sigmas, **options)
        assert len(calls) == nfe(name, 7, **options)
    assert nfe("pc", 7, corrector_steps=2) == 21 and nfe("ald", 7, n_steps_each=3) == 22
    assert steps_for_nfe("pc", 20, corrector_steps=1) == 10 and steps_for_nfe("heun", 9) == 5


# The SDEs in their own coordinates (Song et al. 2021, Eq. 30-32), to check that the engine's schedules are their
# marginals.
@dataclass(frozen=True)
class VESDE:
    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** torch.as_tensor(t, dtype=torch.float64)

    def drift(self, x: Tensor, t: float) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: float) -> float:
        """g(t) = sqrt(d[sigma^2]/dt) = sigma(t) sqrt(2 log(sigma_max / sigma_min))."""
        return float(self.sigma(t)) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(mean coefficient, std) of x_t | x0 started at t = 0."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.ones_like(t), (self.sigma(t) ** 2 - self.sigma_min**2).sqrt()


@dataclass(frozen=True)
class VPSDE:
    beta_0: float = 0.1
    beta_1: float = 20.0

    def beta(self, t) -> float:
        return self.beta_0 + float(t) * (self.beta_1 - self.beta_0)

    def drift(self, x: Tensor, t: float) -> Tensor:
        return -0.5 * self.beta(t) * x

    def diffusion(self, t: float) -> float:
        return math.sqrt(self.beta(t))

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        m = torch.exp(-0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0)
        return m, (1 - m**2).sqrt()


@pytest.mark.parametrize("sde", [VESDE(0.01, 50.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_sde_marginals_match_their_closed_forms_and_the_engine_schedules(sde):
    """Simulate the forward SDE by Euler-Maruyama from a fixed x0 and compare with the closed-form marginal, which is
    also the engine's ``ve`` and continuous ``linear`` schedule."""
    g = torch.Generator().manual_seed(0)
    x0 = 0.8
    x = torch.full((20000,), x0, dtype=torch.float64)
    n = 2000
    checks = {500: None, 1000: None, 2000: None}
    for i in range(n):
        t = i / n
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = x + sde.drift(x, t) / n + sde.diffusion(t) * math.sqrt(1 / n) * z
        if i + 1 in checks:
            checks[i + 1] = (float(x.mean()), float(x.std()))
    for k, (mean, std) in checks.items():
        m, s = (float(v) for v in sde.marginal(torch.tensor(k / n)))
        assert abs(mean - m * x0) < 0.03 * max(1.0, s), (k, mean, m * x0)
        assert abs(std / s - 1) < 0.03, (k, std, s)
    schedule = build_schedule("ve" if isinstance(sde, VESDE) else "linear", 0)
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    m, s = sde.marginal(t)
    if isinstance(sde, VESDE):  # the VE schedule is x0 + sigma(t) eps: sigma(t)^2 = s^2 + sigma_min^2
        assert torch.allclose(schedule.sigma(t) ** 2, s**2 + sde.sigma_min**2)
    else:  # the VP marginal (m x0, 1 - m^2) is the schedule's (alpha_t, sigma_t)
        alpha, sigma_t = schedule.vp_alpha_sigma(t)
        assert torch.allclose(alpha, m) and torch.allclose(sigma_t, s)


def two_classes():
    target = Mixture([-1.0, 1.0], s=0.6)
    return target, lambda x, sigma, y: target.log_posterior(x, sigma).gather(1, y[:, None].long())[:, 0]


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "pc", "ddpm"])
def test_classifier_guidance_with_the_exact_posterior_moves_samples_toward_the_class(sampler):
    """A 1-d mixture of two overlapping classes (means -1, +1, std 0.6): the share of samples on class 0's side
    grows with the scale, and p(class 0 | sample) with it."""
    target, log_prob = two_classes()
    n, shape = 4000, (1, 1, 1)
    labels = torch.zeros(n, dtype=torch.long)  # class 0, mean -1
    sigmas = sampling_sigmas(build_schedule("ve", 0), 20, "logsnr")
    share, posterior = {}, {}
    for scale in (0.0, 1.0, 3.0, 10.0):
        g = torch.Generator().manual_seed(1)
        guided = ClassifierGuidance(target.denoiser, log_prob, scale, labels)
        x = SAMPLERS[sampler](guided, torch.randn(n, *shape, generator=g), sigmas, generator=g)
        share[scale] = float((x.flatten() < 0).float().mean())
        posterior[scale] = float(target.log_posterior(x, 1e-3)[:, 0].exp().mean())
        if scale == 0:
            g = torch.Generator().manual_seed(1)
            plain = SAMPLERS[sampler](target.denoiser, torch.randn(n, *shape, generator=g), sigmas, generator=g)
            assert torch.equal(x, plain) and guided.calls == 0  # scale 0 is the unguided sampler, exactly
        else:
            assert guided.calls > 0
    assert 0.45 < share[0.0] < 0.55, share
    assert share[0.0] < share[1.0] <= share[3.0] <= share[10.0], share  # an ODE sampler saturates at 1
    assert posterior[0.0] < posterior[1.0] < posterior[3.0] < posterior[10.0], posterior
    assert share[10.0] > 0.9


def test_classifier_guidance_adds_scale_sigma2_grad_log_p():
    target, log_prob = two_classes()
    x, sigma, labels = torch.randn(4, *SHAPE, dtype=torch.float64), torch.tensor(0.8), torch.tensor([0, 1, 0, 1])
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(xg, sigma, labels).sum(), xg)
    guided = ClassifierGuidance(target.denoiser, log_prob, 2.5, labels)(x, sigma)
    assert torch.allclose(guided, target.denoiser(x, sigma) + 2.5 * 0.64 * grad)


def test_out_of_range_settings_are_refused_with_the_valid_range():
    target = Mixture([0.0], s=0.5)
    sigmas = sampling_sigmas(build_schedule("ve", 0), 5, "logsnr")
    x = torch.randn(2, *SHAPE)
    with pytest.raises(ValueError, match=r"step_size 0\.5 is outside its valid range \(0, 0\.0002\)"):
        SAMPLERS["ald"](target.denoiser, x, sigmas, step_size=0.5)
    with pytest.raises(ValueError, match="step_size -1 is outside"):
        SAMPLERS["ald"](target.denoiser, x, sigmas, step_size=-1)
    for snr in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"snr {snr:g} is outside its valid range \(0, 1\]"):
            SAMPLERS["pc"](target.denoiser, x, sigmas, snr=snr)
    with pytest.raises(ValueError, match="corrector_steps must be a whole number >= 0"):
        SAMPLERS["pc"](target.denoiser, x, sigmas, corrector_steps=-1)
    with pytest.raises(ValueError, match="unknown predictor 'heun'"):
        SAMPLERS["pc"](target.denoiser, x, sigmas, predictor="heun")
    with pytest.raises(ValueError, match="scale must be a finite number >= 0, got -1"):
        ClassifierGuidance(target.denoiser, lambda *a: None, -1.0, torch.zeros(2))
    with pytest.raises(ValueError, match="zero_terminal_snr would put it at infinity"):
        build_schedule("ve", 0, zero_terminal_snr=True)
    with pytest.raises(ValueError, match=r"schedule_options \['sigma'\] are not settings of the ve schedule"):
        build_schedule("ve", 0, options={"sigma": 3})
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        build_schedule("ve", 0, options={"sigma_min": 1.0, "sigma_max": 0.5})


def test_discrete_ve_schedule_is_ncsn_geometric_levels():
    schedule = build_schedule("ve", 10, options={"sigma_min": 0.01, "sigma_max": 1.0})
    sigmas = schedule.sigma(torch.arange(1, 11, dtype=torch.float64) / 10)
    assert torch.allclose(sigmas, torch.logspace(-2, 0, 10, dtype=torch.float64))
    assert schedule.sigma_range() == pytest.approx((0.01, 1.0))
