"""Timestep discretizations: the decreasing noise levels sigma~_0 > ... > sigma~_{N-1} > sigma~_N = 0 a sampler visits.

- ``leading`` / ``trailing`` / ``linspace``: uniform in the schedule's time t, with diffusers' ``timestep_spacing``
  conventions on a discrete T-step schedule (continuous schedules: t evenly over (0, 1] whatever the spacing);
- ``karras``: the Karras ramp (:mod:`.karras`) at i / (N - 1), rho = 7 (Karras et al. 2022, Eq. 5);
- ``logsnr``: uniform in log-SNR between sigma_max and sigma_min (DPM-Solver's ``skip_type="logSNR"``, Lu et al. 2022);
- ``flow``: uniform in the schedule's time from t = 1 to its smallest time t_min (1 / T when discrete), then 0:
  diffusers' ``FlowMatchEulerDiscreteScheduler`` grid (linspace(1, 1/1000, N), shifted by the schedule).
sigma_min and sigma_max are the schedule's (:meth:`NoiseSchedule.sigma_range`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ...registry import Registry
from .base import NoiseSchedule
from .karras import karras_sigma

SPACINGS = ("leading", "trailing", "linspace")


def check_steps(steps) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def sampling_times(schedule: NoiseSchedule, steps: int, spacing: str = "leading") -> Tensor:
    """Decreasing times t_0 > ... > t_{steps-1} > t_steps = 0 (float64).

    Discrete schedules follow diffusers' ``timestep_spacing``: ``leading`` takes every (T // steps)-th grid index
    counted from 0, ``trailing`` counts back from T - 1, ``linspace`` rounds an even spread over [0, T - 1].
    """
    steps = check_steps(steps)
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


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    steps = check_steps(steps)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    return torch.cat([karras_sigma(ramp, sigma_min, sigma_max, rho), torch.zeros(1, dtype=torch.float64)])


def logsnr_sigmas(sigma_min: float, sigma_max: float, steps: int) -> Tensor:
    steps = check_steps(steps)
    log_sigma = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)
    return torch.cat([log_sigma.exp(), torch.zeros(1, dtype=torch.float64)])


def flow_sigmas(schedule: NoiseSchedule, steps: int) -> Tensor:
    """Uniform in the schedule's time from t = 1 to its smallest time (1 / T when discrete), then 0."""
    t_min = 1.0 / schedule.num_steps if schedule.num_steps else schedule.t_min or NoiseSchedule.t_min
    t = torch.linspace(1.0, t_min, check_steps(steps), dtype=torch.float64)
    return torch.cat([schedule.sigma(t), torch.zeros(1, dtype=torch.float64)])


class Spaced:
    """A timestep spacing of :func:`sampling_times` as a grid."""

    def __init__(self, spacing: str):
        self.spacing = spacing

    def __call__(self, schedule: NoiseSchedule, steps: int) -> Tensor:
        return schedule.sigma(sampling_times(schedule, steps, self.spacing))


# a grid is ``grid(schedule, steps) -> the steps + 1 noise levels``; a new one is one function registered here
DISCRETIZATIONS: Registry[Callable[[NoiseSchedule, int], Tensor]] = Registry("discretization")
for _spacing in SPACINGS:
    DISCRETIZATIONS.register(_spacing, Spaced(_spacing))
DISCRETIZATIONS.register("karras", lambda schedule, steps: karras_sigmas(*schedule.sigma_range(), steps))
DISCRETIZATIONS.register("logsnr", lambda schedule, steps: logsnr_sigmas(*schedule.sigma_range(), steps))
DISCRETIZATIONS.register("flow", flow_sigmas)


def sampling_sigmas(schedule: NoiseSchedule, steps: int, discretization: str = "leading") -> Tensor:
    """The ``steps + 1`` noise levels (float64, on the CPU, last one 0) of a ``steps``-interval sampling grid."""
    return DISCRETIZATIONS.lookup(discretization)(schedule, steps)
