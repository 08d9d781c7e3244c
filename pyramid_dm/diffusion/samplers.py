"""Samplers: short functions of (denoiser, x, schedule, steps) that only call the denoiser D(x_t, t, **cond) -> x0_hat.

Shared signature: ``sampler(denoiser, x, schedule, steps=None, *, cond=None, generator=None, **options) -> x0``,
where ``x`` is the starting noise N(0, I) and ``steps`` the number of denoiser calls (NFE) of a one-call-per-step
sampler. Time grids come from :func:`sampling_times`; the last step always lands on t = 0 (alpha = 1, sigma = 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .parameterization import Denoiser, to_eps
from .schedules import NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace")


def sampling_times(schedule: NoiseSchedule, steps: int, spacing: str = "leading") -> Tensor:
    """Decreasing times t_0 > ... > t_{steps-1} > t_steps = 0 (float64).

    Discrete schedules follow diffusers' ``timestep_spacing``: ``leading`` takes every (T // steps)-th grid index
    counted from 0, ``trailing`` counts back from T - 1, ``linspace`` rounds an even spread over [0, T - 1].
    Continuous schedules spread the times evenly over (0, 1] whatever the spacing.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    T = schedule.num_steps
    if T is None:
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if steps > T:
        raise ValueError(f"steps={steps} exceeds the {T} steps of the discrete schedule")
    if spacing == "leading":
        idx = torch.arange(steps, dtype=torch.float64) * (T // steps)
    elif spacing == "trailing":
        idx = torch.arange(T, 0, -T / steps, dtype=torch.float64).round().flip(0) - 1
    else:
        idx = torch.linspace(0, T - 1, steps, dtype=torch.float64).round()
    return torch.cat([((idx.flip(0) + 1) / T), torch.zeros(1, dtype=torch.float64)])


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _times(schedule: NoiseSchedule, steps: int | None, spacing: str) -> Tensor:
    return sampling_times(schedule, (schedule.num_steps or 1000) if steps is None else steps, spacing)


@torch.no_grad()
def ddpm(
    denoiser: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    steps: int | None = None,
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    variance: str = "large",
    spacing: str = "leading",
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Eq. 6-7), generalised to any pair t > s of the grid:
    x_s ~ N(mu~(x_t, x0_hat), var) with beta = 1 - abar_t / abar_s,
    mu~ = sqrt(abar_s) beta / (1 - abar_t) x0_hat + sqrt(1 - beta) (1 - abar_s) / (1 - abar_t) x_t,
    var = beta ("large", DDPM's CIFAR-10 choice) or beta (1 - abar_s) / (1 - abar_t) ("small");
    no noise on the last step.
    ``steps=None`` walks every step of a discrete schedule (1000 for a continuous one).
    """
    if variance not in ("large", "small"):
        raise ValueError(f"unknown DDPM variance {variance!r}; choose 'large' or 'small'")
    cond = cond or {}
    times = _times(schedule, steps, spacing)
    for t, s in zip(times[:-1], times[1:]):
        ab_t, ab_s = (schedule.alpha_bar(v.reshape(1).to(x.device)).double() for v in (t, s))
        x0 = denoiser(x, t.float().to(x.device), **cond)
        beta = 1 - ab_t / ab_s
        c0 = ab_s.sqrt() * beta / (1 - ab_t)
        ct = (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t)
        x = c0.to(x.dtype) * x0 + ct.to(x.dtype) * x
        if s > 0:
            var = beta if variance == "large" else beta * (1 - ab_s) / (1 - ab_t)
            x = x + var.sqrt().to(x.dtype) * _noise(x, generator)
    return x


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    steps: int | None = 50,
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    spacing: str = "leading",
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z with
    c = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s). eta = 0 is deterministic; eta = 1 is DDPM-like.
    """
    if eta < 0:
        raise ValueError(f"DDIM eta must be >= 0, got {eta}")
    cond = cond or {}
    times = _times(schedule, steps, spacing)
    for t, s in zip(times[:-1], times[1:]):
        a_t, s_t = (v.double() for v in schedule.alpha_sigma(t.reshape(1).to(x.device)))
        a_s, s_s = (v.double() for v in schedule.alpha_sigma(s.reshape(1).to(x.device)))
        x0 = denoiser(x, t.float().to(x.device), **cond)
        eps = to_eps("x0", x0, x, a_t.to(x.dtype), s_t.to(x.dtype))
        c = eta * (s_s / s_t) * (1 - (a_t / a_s) ** 2).clamp(min=0).sqrt()
        x = a_s.to(x.dtype) * x0 + (s_s**2 - c**2).clamp(min=0).sqrt().to(x.dtype) * eps
        if eta > 0 and s > 0:
            x = x + c.to(x.dtype) * _noise(x, generator)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str) -> Callable[..., Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None


class CountingDenoiser:
    """Wraps a denoiser and counts its calls: the number of function evaluations (NFE) of a sampler run."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, t, **cond)
