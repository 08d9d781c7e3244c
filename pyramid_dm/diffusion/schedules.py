"""Variance-preserving noise schedules.

Every schedule describes x_t = alpha_t * x0 + sigma_t * eps with alpha_t^2 + sigma_t^2 = 1 for a time t in [0, 1]
(t = 0 clean, t = 1 pure noise). It is defined by its log signal-to-noise ratio
lambda_t = log(alpha_t^2 / sigma_t^2), so alpha_t^2 = sigmoid(lambda_t) and sigma_t^2 = sigmoid(-lambda_t).

Discrete schedules (DDPM, Ho et al. 2020) have ``num_steps = T``: step i in 0..T-1 sits at t = (i + 1) / T and carries
alpha_bar_i = prod_{j <= i} (1 - beta_j). Continuous schedules have ``num_steps = None`` and may be evaluated anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SNR_MIN, LOG_SNR_MAX = -30.0, 30.0  # keeps alpha and sigma strictly positive in float32


class NoiseSchedule:
    """Base class: subclasses implement ``log_snr(t)``; everything else derives from it."""

    num_steps: int | None = None
    name: str = "schedule"

    def log_snr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t); t <= 0 is the clean data, alpha = 1 and sigma = 0 exactly."""
        lam = self.log_snr(t)
        clean = t <= 0
        alpha = torch.where(clean, 1.0, torch.sigmoid(lam).sqrt())
        return alpha, torch.where(clean, 0.0, torch.sigmoid(-lam).sqrt())

    def alpha_bar(self, t: Tensor) -> Tensor:
        return self.alpha_sigma(t)[0] ** 2

    def snr(self, t: Tensor) -> Tensor:
        return self.log_snr(t).exp()

    def sample_t(self, n: int, *, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Training times: uniform over the T grid points when discrete, uniform on (0, 1] when continuous."""
        return self.from_uniform(torch.rand(n, device=device, generator=generator))

    def from_uniform(self, u: Tensor) -> Tensor:
        """Map u ~ U[0, 1) to a training time: t = 1 - u on (0, 1], snapped up to the T grid when discrete."""
        t = 1.0 - u
        if self.num_steps is not None:
            t = (t * self.num_steps).ceil().clamp(1, self.num_steps) / self.num_steps
        return t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps})"


class DiscreteSchedule(NoiseSchedule):
    """A table of alpha_bar_i, i = 0..T-1, at t_i = (i + 1) / T; log-SNR is linear between grid points."""

    def __init__(self, alphas_cumprod: Tensor, name: str = "discrete"):
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ab.ndim != 1 or len(ab) < 2:
            raise ValueError(f"alphas_cumprod must be a 1-d table of at least 2 steps, got shape {tuple(ab.shape)}")
        if not bool(((ab > 0) & (ab < 1)).all()) or not bool((ab[1:] < ab[:-1]).all()):
            raise ValueError("alphas_cumprod must decrease strictly inside (0, 1)")
        self.alphas_cumprod = ab
        self.log_snr_table = (ab / (1 - ab)).log().float()
        self.num_steps = len(ab)
        self.name = name

    @property
    def betas(self) -> Tensor:
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return 1 - self.alphas_cumprod / prev

    def log_snr(self, t: Tensor) -> Tensor:
        table = self.log_snr_table.to(t.device)
        pos = (t.float() * self.num_steps - 1).clamp(0, self.num_steps - 1)
        lo = pos.floor().long().clamp(max=self.num_steps - 2)
        frac = pos - lo
        return torch.lerp(table[lo], table[lo + 1], frac)


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM linear betas: beta_i = linspace(beta_start, beta_end, T) scaled to T = 1000 (Ho et al. 2020)."""
    scale = 1000 / num_steps
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """iDDPM cosine: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t + s) / (1 + s)) * pi / 2) (Nichol & Dhariwal 2021)."""
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(torch.zeros_like(t))


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Discrete iDDPM cosine table with beta clipped at ``max_beta`` as in the paper."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    ab = cosine_alpha_bar(t, s)
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, 0)


class LinearSchedule(DiscreteSchedule):
    """DDPM linear schedule with T discrete steps."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__(linear_alphas_cumprod(num_steps, beta_start, beta_end), name="linear")


class CosineSchedule(DiscreteSchedule):
    """iDDPM cosine schedule with T discrete steps."""

    def __init__(self, num_steps: int = 1000, s: float = 0.008):
        super().__init__(cosine_alphas_cumprod(num_steps, s), name="cosine")


class ContinuousLinearSchedule(NoiseSchedule):
    """Continuous-time limit of the DDPM linear schedule (VP-SDE, Song et al. 2021):
    log alpha_bar(t) = -(beta_0 t + (beta_1 - beta_0) t^2 / 2), with beta_0 = 0.1, beta_1 = 20 for T = 1000 defaults."""

    name = "linear"

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0):
        self.beta_0, self.beta_1 = beta_0, beta_1

    def log_snr(self, t: Tensor) -> Tensor:
        t = t.double()
        log_ab = -(self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2)
        return (log_ab - torch.log(-torch.expm1(log_ab))).clamp(LOG_SNR_MIN, LOG_SNR_MAX).float()


class ContinuousCosineSchedule(NoiseSchedule):
    """Continuous iDDPM cosine: log-SNR of alpha_bar(t) = f(t) / f(0), clamped so t = 1 stays finite."""

    name = "cosine"

    def __init__(self, s: float = 0.008):
        self.s = s

    def log_snr(self, t: Tensor) -> Tensor:
        ab = cosine_alpha_bar(t.double(), self.s)
        return (ab.log() - torch.log1p(-ab)).clamp(LOG_SNR_MIN, LOG_SNR_MAX).float()


SCHEDULES = {
    ("linear", True): LinearSchedule,
    ("cosine", True): CosineSchedule,
    ("linear", False): ContinuousLinearSchedule,
    ("cosine", False): ContinuousCosineSchedule,
}


def build_schedule(name: str, num_steps: int | None = 1000) -> NoiseSchedule:
    """``name`` in {linear, cosine}; ``num_steps`` = T for a discrete schedule, ``None`` or 0 for continuous time."""
    discrete = bool(num_steps)
    try:
        cls = SCHEDULES[(name, discrete)]
    except KeyError:
        names = sorted({n for n, _ in SCHEDULES})
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {names}") from None
    return cls(num_steps) if discrete else cls()


def q_sample(x0: Tensor, t: Tensor, schedule: NoiseSchedule, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Forward noising q(x_t | x0): returns (x_t, eps)."""
    eps = torch.randn_like(x0) if noise is None else noise
    alpha, sigma = (a.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1))) for a in schedule.alpha_sigma(t))
    return alpha * x0 + sigma * eps, eps
