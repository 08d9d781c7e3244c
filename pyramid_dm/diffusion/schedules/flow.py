"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; Esser et al. 2024, SD3): the straight path
x_t = (1 - t) x0 + t eps, t in [0, 1] (t = 1 pure noise), and the velocity v = eps - x0 a network predicts.

In the engine's sigma space x~ = x0 + sigma~ eps (:mod:`.schedules`) the straight path is x_t = x~ / (1 + sigma~) with
sigma~ = t / (1 - t): a variance-preserving path up to the scale (1 - t) instead of alpha_t. So a flow model is one
more preconditioning (the ``flow`` prediction of :mod:`.parameterization`: D = x_t - t F) and one more schedule (the
``flow`` schedule below), and every sampler of the engine samples it; conversely flow matching's Euler sampler
(:mod:`..samplers.flow`) samples any model.

- Timestep shift (SD3, Sec. 5.3.2; diffusers ``FlowMatchEulerDiscreteScheduler``): t' = s t / (1 + (s - 1) t), i.e.
  sigma~' = s sigma~, a log-SNR shift of -2 ln s. FLUX chooses s = exp(mu) from the sequence length n of the image,
  mu = base_shift + (max_shift - base_shift) (n - 256) / (4096 - 256) (diffusers ``calculate_shift``); here n is the
  number of 2x2 patches of a level's grid, as FLUX's latent patchify counts them.
- Training times (SD3, Sec. 3.1): ``logit_normal`` t = sigmoid(m + s z), z ~ N(0, 1) (SD3's default lognorm(0, 1));
  ``mode`` t = 1 - u - s (cos^2(pi u / 2) - 1 + u) (SD3, Eq. 20, s = 1.29); ``schedule``: t uniform.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LOG_SNR_MAX, LOG_SNR_MIN, SCHEDULES, NoiseSchedule, ScheduleBuilder, ShiftedSchedule

FLUX_SHIFT = {"base_shift": 0.5, "max_shift": 1.15, "base_seq_len": 256, "max_seq_len": 4096}


class RectifiedFlowSchedule(NoiseSchedule):
    """The straight path's noise levels: sigma~(t) = t / (1 - t), log-SNR 2 log((1 - t) / t). t = 1 is pure noise
    (zero terminal SNR: the log-SNR is clamped at -30, sigma~ = 3.3e6, where x_t = x~ / (1 + sigma~) is the noise to
    3e-7); sampling grids in log-SNR start at sigma~ = 4096 (:meth:`NoiseSchedule.sigma_range`)."""

    name = "flow"
    straight_path = True

    def log_snr(self, t: Tensor) -> Tensor:
        t = t.double()
        return (2 * (torch.log1p(-t.clamp(max=1.0)) - t.log())).clamp(LOG_SNR_MIN, LOG_SNR_MAX)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-torch.as_tensor(lam, dtype=torch.float64) / 2)


def flux_shift(resolution: int, base_shift=0.5, max_shift=1.15, base_seq_len=256, max_seq_len=4096) -> float:
    """FLUX's resolution-dependent shift s = exp(mu) for a ``resolution`` x ``resolution`` grid of 2x2 patches."""
    n = (resolution // 2) ** 2
    mu = base_shift + (max_shift - base_shift) * (n - base_seq_len) / (max_seq_len - base_seq_len)
    return math.exp(mu)


class FlowBuilder(ScheduleBuilder):
    """The ``flow`` schedule (:func:`build_flow`)."""

    def build(self, num_steps, zero_terminal_snr, log_snr_shift, options, resolution) -> NoiseSchedule:
        return build_flow(num_steps, zero_terminal_snr, log_snr_shift, options, resolution)


def build_flow(
    num_steps: int | None, zero_terminal_snr: bool, log_snr_shift: float, options: dict | None, resolution: int | None
) -> NoiseSchedule:
    """The ``flow`` schedule of :func:`~.schedules.build_schedule`. ``options``: ``shift`` (a number s >= 1, or
    ``"flux"`` for FLUX's resolution-dependent s at the level's ``resolution``; FLUX's constants may be overridden by
    the keys of :data:`FLUX_SHIFT`). Continuous time only; a resolution shift of the pyramid adds to the log-SNR."""
    options = dict(options or {})
    unknown = sorted(set(options) - {"shift", *FLUX_SHIFT})
    if unknown:
        raise ValueError(
            f"schedule_options {unknown} are not settings of the flow schedule (shift, {list(FLUX_SHIFT)})"
        )
    if num_steps:
        raise ValueError(
            f"the flow schedule is continuous (t in [0, 1]); set model.num_timesteps: 0, not {num_steps} "
            "(samplers choose their own steps)"
        )
    del zero_terminal_snr  # the straight path always ends in pure noise
    shift = options.pop("shift", 1.0)
    if shift == "flux":
        if not resolution:
            raise ValueError("schedule_options.shift 'flux' needs the level's resolution")
        shift = flux_shift(resolution, **{**FLUX_SHIFT, **options})
    elif options:
        raise ValueError(f"schedule_options {sorted(options)} only apply with shift: flux")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0:
        raise ValueError(f"schedule_options.shift must be a number > 0 or 'flux', got {shift!r}")
    total = log_snr_shift - 2 * math.log(shift)
    return ShiftedSchedule(RectifiedFlowSchedule(), total) if total else RectifiedFlowSchedule()


SCHEDULES.register("flow", FlowBuilder())


def logit_normal_t(u: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """SD3's logit-normal training time t = sigmoid(mean + std z) with z = Phi^-1(u)."""
    z = torch.special.ndtri(u.double().clamp(1e-7, 1 - 1e-7))
    return torch.sigmoid(mean + std * z)


def mode_t(u: Tensor, scale: float = 1.29) -> Tensor:
    """SD3's mode sampling with heavy tails (Eq. 20): t = 1 - u - scale (cos^2(pi u / 2) - 1 + u), in (0, 1]."""
    u = u.double()
    t = 1 - u - scale * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
    return t.clamp(1e-7, 1.0)


def flow_time(sigma) -> Tensor:
    """t = sigma~ / (1 + sigma~): where x~ lies on the straight path."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return sigma / (1 + sigma)
