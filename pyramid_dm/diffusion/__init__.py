"""Diffusion math in pure torch: schedules, parameterizations, losses, discretizations, samplers and guidance.
No Lightning here."""

from .guidance.classifier_free import ClassifierFreeGuidance
from .parameterization import PREDICTIONS, Denoiser, DenoiserFn, coefficients, network_input, network_target
from .pyramid.context import augment_context, context_of, mix_context, snap_to, upsample_to
from .pyramid.layouts import LAYOUTS, FridoLayout, Layout, NativeLayout
from .pyramid.levels import LevelGeometry, check_resolutions
from .samplers.core import (
    SAMPLERS,
    CountingDenoiser,
    SamplerSpec,
    ddim,
    ddpm,
    dpmpp_2m,
    dpmpp_3m,
    euler,
    get_sampler,
    heun,
    nfe,
    sample,
    steps_for_nfe,
)
from .schedules.base import SCHEDULES, NoiseSchedule, build_schedule, q_sample, resolution_shift
from .schedules.discretization import DISCRETIZATIONS, sampling_sigmas, sampling_times
from .schedules.ve import VESchedule
from .training.losses import WEIGHTINGS, DiffusionLoss, diffusion_loss, loss_weight
from .training.times import TRAINING_NOISE, TRAINING_TIMES

__all__ = [
    "DISCRETIZATIONS",
    "PREDICTIONS",
    "SAMPLERS",
    "SamplerSpec",
    "SCHEDULES",
    "TRAINING_NOISE",
    "WEIGHTINGS",
    "LAYOUTS",
    "ClassifierFreeGuidance",
    "DiffusionLoss",
    "FridoLayout",
    "Layout",
    "LevelGeometry",
    "NativeLayout",
    "check_resolutions",
    "CountingDenoiser",
    "Denoiser",
    "DenoiserFn",
    "NoiseSchedule",
    "build_schedule",
    "augment_context",
    "coefficients",
    "context_of",
    "ddim",
    "ddpm",
    "diffusion_loss",
    "dpmpp_2m",
    "dpmpp_3m",
    "euler",
    "get_sampler",
    "heun",
    "loss_weight",
    "mix_context",
    "network_input",
    "network_target",
    "nfe",
    "q_sample",
    "resolution_shift",
    "sample",
    "sampling_sigmas",
    "sampling_times",
    "snap_to",
    "steps_for_nfe",
    "TRAINING_TIMES",
    "VESchedule",
    "upsample_to",
]
