"""Diffusion math in pure torch: schedules, parameterizations, losses and samplers. No Lightning here."""

from .losses import diffusion_loss, loss_weight
from .parameterization import PREDICTIONS, PredictionDenoiser, target, to_eps, to_x0
from .samplers import SAMPLERS, CountingDenoiser, ddim, ddpm, get_sampler, sampling_times
from .schedules import NoiseSchedule, build_schedule, q_sample

__all__ = [
    "PREDICTIONS",
    "SAMPLERS",
    "CountingDenoiser",
    "NoiseSchedule",
    "PredictionDenoiser",
    "build_schedule",
    "ddim",
    "ddpm",
    "diffusion_loss",
    "get_sampler",
    "loss_weight",
    "q_sample",
    "sampling_times",
    "target",
    "to_eps",
    "to_x0",
]
