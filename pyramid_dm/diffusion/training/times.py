"""Training-time distributions: where in the noise schedule a training step puts each sample.

Each draws (t, sigma~) from u ~ U[0, 1) on a schedule (:mod:`.schedules`):
- ``schedule``: t as the schedule itself spaces it (:meth:`~.schedules.NoiseSchedule.from_uniform`; DDPM's uniform
  timesteps);
- ``lognormal``: ln sigma~ ~ N(mean, std^2) (EDM, Karras et al. 2022; settings ``lognormal_mean``/``lognormal_std``),
  mapped back to t;
- ``logit_normal``: t = sigmoid(mean + std z) (SD3, Esser et al. 2024; ``logit_normal_mean``/``logit_normal_std``);
- ``mode``: SD3's mode density with heavy tails, scale ``mode_scale`` (:func:`~.flow.mode_t`);
the last two in the schedule's own time (before any shift, as SD3 shifts its drawn t). A new distribution is one
subclass registered in :data:`TRAINING_TIMES`; it reads its settings from the model's options by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ...registry import Registry
from ..schedules.base import NoiseSchedule
from ..schedules.flow import logit_normal_t, mode_t


class TrainingTimes:
    name = "training times"

    @classmethod
    def from_options(cls, options: Mapping) -> TrainingTimes:
        """The distribution with its settings taken from the model's ``options`` (a mapping of option names)."""
        return cls()

    def draw(self, schedule: NoiseSchedule, u: Tensor) -> tuple[Tensor, Tensor]:
        """(t, sigma~) of a training batch from u ~ U[0, 1)."""
        raise NotImplementedError


class ScheduleTimes(TrainingTimes):
    name = "schedule"

    def draw(self, schedule, u):
        t = schedule.from_uniform(u)
        return t, schedule.sigma(t)


class LogNormalSigma(TrainingTimes):
    name = "lognormal"

    def __init__(self, mean: float = -1.2, std: float = 1.2):
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def from_options(cls, options):
        return cls(options.get("lognormal_mean", -1.2), options.get("lognormal_std", 1.2))

    def draw(self, schedule, u):
        z = torch.special.ndtri(u.double().clamp(1e-7, 1 - 1e-7))
        sigma = (self.mean + self.std * z).exp()
        return schedule.t_of_sigma(sigma).to(u.dtype), sigma


class LogitNormalTimes(TrainingTimes):
    name = "logit_normal"

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def from_options(cls, options):
        return cls(options.get("logit_normal_mean", 0.0), options.get("logit_normal_std", 1.0))

    def draw(self, schedule, u):
        t = logit_normal_t(u, self.mean, self.std).to(u.dtype)
        return t, schedule.sigma(t)


class ModeTimes(TrainingTimes):
    name = "mode"

    def __init__(self, scale: float = 1.29):
        self.scale = float(scale)

    @classmethod
    def from_options(cls, options):
        return cls(options.get("mode_scale", 1.29))

    def draw(self, schedule, u):
        t = mode_t(u, self.scale).to(u.dtype)
        return t, schedule.sigma(t)


TRAINING_TIMES: Registry[type[TrainingTimes]] = Registry("training noise")
for _cls in (ScheduleTimes, LogNormalSigma, LogitNormalTimes, ModeTimes):
    TRAINING_TIMES.register(_cls.name, _cls)
TRAINING_NOISE = TRAINING_TIMES  # the name the model option (``training_noise``) and older code use
