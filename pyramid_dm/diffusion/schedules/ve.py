"""The variance-exploding noise levels of NCSN and the VE SDE (Song & Ermon 2019, Sec. 4.2; Song et al. 2021, Eq. 30):
sigma~(t) = sigma_min (sigma_max / sigma_min)^t, geometric on t in [0, 1], continuous or as NCSN's L discrete levels.
``build_schedule("ve", ...)`` builds them."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LOG_SNR_MAX, LOG_SNR_MIN, SCHEDULES, DiscreteSchedule, NoiseSchedule, ScheduleBuilder


class VESchedule(NoiseSchedule):
    """The variance-exploding noise levels of NCSN and the VE SDE (Song & Ermon 2019, Sec. 4.2; Song et al. 2021,
    Eq. 30): sigma~(t) = sigma_min (sigma_max / sigma_min)^t, geometric on t in [0, 1]. A VE process x0 + sigma eps is
    already the sampler's sigma space, so the schedule is only its sigma range; sigma_max should be about the largest
    distance between two training images (Song & Ermon 2020, Technique 1): 50 for CIFAR-10."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"the ve schedule needs 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_min = float(sigma_min), float(sigma_max), 0.0

    def log_snr(self, t: Tensor) -> Tensor:
        log_sigma = math.log(self.sigma_min) + t.double() * math.log(self.sigma_max / self.sigma_min)
        return (-2 * log_sigma).clamp(LOG_SNR_MIN, LOG_SNR_MAX)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        log_sigma = -torch.as_tensor(lam, dtype=torch.float64) / 2
        return ((log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)).clamp(0, 1)

    def sigma_range(self) -> tuple[float, float]:
        return self.sigma_min, self.sigma_max


class DiscreteVESchedule(DiscreteSchedule):
    """NCSN's L noise levels: sigma_i geometric from sigma_min (i = 0, the cleanest) to sigma_max (i = L - 1),
    trained uniformly over the levels (Song & Ermon 2019, Eq. 5-6)."""

    def __init__(self, num_steps: int = 10, sigma_min: float = 0.01, sigma_max: float = 50.0):
        continuous = VESchedule(sigma_min, sigma_max)
        t = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        super().__init__(torch.sigmoid(continuous.log_snr(t)), name="ve")
        self.sigma_min, self.sigma_max = continuous.sigma_min, continuous.sigma_max


def build_ve(num_steps: int | None, zero_terminal_snr: bool, log_snr_shift: float, options: dict | None):
    """The ``ve`` schedule of :func:`~.schedules.build_schedule`: ``options`` are sigma_min and sigma_max."""
    if zero_terminal_snr:
        raise ValueError(
            "the ve schedule ends at a finite sigma_max (its prior is N(0, sigma_max^2)); zero_terminal_snr "
            "would put it at infinity, where no sample can start"
        )
    options = dict(options or {})
    unknown = sorted(set(options) - {"sigma_min", "sigma_max"})
    if unknown:
        raise ValueError(f"schedule_options {unknown} are not settings of the ve schedule (sigma_min, sigma_max)")
    if log_snr_shift:
        raise ValueError("the ve schedule is its sigma range: set schedule_options.sigma_max, not a log-SNR shift")
    return DiscreteVESchedule(num_steps, **options) if num_steps else VESchedule(**options)


class VEBuilder(ScheduleBuilder):
    """The ``ve`` schedule (:func:`build_ve`)."""

    def build(self, num_steps, zero_terminal_snr, log_snr_shift, options, resolution) -> NoiseSchedule:
        return build_ve(num_steps, zero_terminal_snr, log_snr_shift, options)


SCHEDULES.register("ve", VEBuilder())
