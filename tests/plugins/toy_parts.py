"""A user's own module of parts, outside the package: one toy variant of each kind that is a registry today, each
registered under its own name. ``PYRAMID_DM_PLUGINS=toy_parts`` (with this folder importable) makes ``fit``,
``sample``, ``evaluate`` and ``search-steps`` know them; nothing in pyramid_dm is edited.
The toys are real variants: each changes what it claims to change (tests/test_plugins.py checks that it ran)."""

from __future__ import annotations

import torch

from pyramid_dm.diffusion.discretization import DISCRETIZATIONS
from pyramid_dm.diffusion.losses import WEIGHTINGS, LossWeighting
from pyramid_dm.diffusion.parameterization import PREDICTIONS, Parameterization
from pyramid_dm.diffusion.samplers import SAMPLERS, SamplerSpec
from pyramid_dm.diffusion.schedules import SCHEDULES, NoiseSchedule, ScheduleBuilder
from pyramid_dm.diffusion.state import check_sigmas, start
from pyramid_dm.diffusion.training_times import TRAINING_TIMES, TrainingTimes

CALLS: dict[str, int] = {}  # how often each toy ran (in this process)


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@torch.no_grad()
def toy_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, damping: float = 1.0):
    """Euler on the probability-flow ODE, with a ``damping`` option (1 = plain Euler)."""
    _count("sampler")
    sigmas, cond = check_sigmas(sigmas), cond or {}
    x = start(x, sigmas)
    for i in range(len(sigmas) - 1):
        x0 = denoiser(x, sigmas[i], **cond)
        x = x + damping * (sigmas[i + 1] - sigmas[i]) * (x - x0) / sigmas[i]
        if callback:
            callback(i, x, x0)
    return x


def toy_grid(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Uniform in sigma~ between the schedule's range ends, then 0."""
    _count("discretization")
    lo, hi = schedule.sigma_range()
    return torch.cat([torch.linspace(hi, lo, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


class ToyLinearSchedule(NoiseSchedule):
    """log-SNR linear in t from +8 to -8 (continuous)."""

    name = "toy_linear"

    def log_snr(self, t):
        return 8.0 - 16.0 * t.double()

    def t_of_log_snr(self, lam):
        return ((8.0 - torch.as_tensor(lam, dtype=torch.float64)) / 16.0).clamp(0, 1)


class ToyScheduleBuilder(ScheduleBuilder):
    def build(self, num_steps, zero_terminal_snr, log_snr_shift, options, resolution):
        _count("schedule")
        return ToyLinearSchedule()


class ToyX0(Parameterization):
    """x0-prediction with the EDM noise input ln(sigma) / 4."""

    name = "toy_x0"

    def coefficients(self, s, sigma_data):
        _count("prediction")
        return torch.zeros_like(s), torch.ones_like(s), 1 / (1 + s**2).sqrt()

    def c_noise(self, sigma, schedule, t=None, window=None):
        return sigma.log() / 4


class ToyTimes(TrainingTimes):
    """t uniform on [0.05, 1]."""

    name = "toy_times"

    def draw(self, schedule, u):
        _count("training_noise")
        t = 0.05 + 0.95 * u
        return t, schedule.sigma(t)


class ToyWeighting(LossWeighting):
    """The x0 MSE weighted by min(SNR, 1) + 0.1."""

    name = "toy_weighting"

    def weight(self, sigma, c_out, sigma_data):
        _count("weighting")
        return ((sigma**-2).clamp(max=1.0) + 0.1) * c_out**2


SAMPLERS.register("toy_euler", SamplerSpec(toy_euler, "toy_grid"))
DISCRETIZATIONS.register("toy_grid", toy_grid)
SCHEDULES.register("toy_linear", ToyScheduleBuilder())
PREDICTIONS.register("toy_x0", ToyX0())
TRAINING_TIMES.register("toy_times", ToyTimes)
WEIGHTINGS.register("toy_weighting", ToyWeighting)
