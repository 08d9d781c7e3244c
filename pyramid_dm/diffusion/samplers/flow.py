"""Flow matching's Euler sampler (Lipman et al. 2023; Esser et al. 2024, SD3; diffusers
``FlowMatchEulerDiscreteScheduler``) on the straight path of :mod:`..schedules.flow`, for any model."""

from __future__ import annotations

import torch

from ..schedules.flow import flow_time
from .state import check_sigmas, start


@torch.no_grad()
def flow_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler on the flow ODE dx_t / dt = v, v = (x_t - x0_hat) / t (diffusers ``FlowMatchEulerDiscreteScheduler.step``:
    x_{t'} = x_t + (t' - t) v), for any denoiser; the state is kept as x~ = x_t / (1 - t). (For every model this is
    the same step as deterministic DDIM: both move x_t along a straight line toward x0_hat.)"""
    sigmas, cond = check_sigmas(sigmas), cond or {}
    x = start(x, sigmas)
    ts = flow_time(sigmas).tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoiser(x, sigmas[i], **cond)
        xt = x * (1 - t)
        v = (xt - x0) / t
        x = (xt + (t_next - t) * v) / (1 - t_next)
        if callback:
            callback(i, x, x0)
    return x
