"""One- and few-step samplers of models trained for them (:mod:`..training.consistency`,
:mod:`..training.meanflow`), on the shared sampler signature (:mod:`.core`); one denoiser call per step.

- :func:`consistency`: multistep consistency sampling (Song et al. 2023, Alg. 1): x0 = f(x~; sigma_0), then at each
  following level sigma_i > 0 re-noise and apply f again. ``stochastic`` (iCT, ECT) draws fresh noise,
  x~ = x0 + sigma_i z; otherwise the noise direction the last call implied, (x~ - x0) / sigma_{i-1}, is kept
  (deterministic, DDIM-like). ``mid_sigmas`` choose the intermediate noise levels (ECT's 2-step CIFAR-10 sample uses
  0.821) in place of the grid's.
- :func:`meanflow`: MeanFlow's sampler (Geng et al. 2025, Alg. 2): z_r = z_t - (t - r) u(z_t, r, t) between
  consecutive times of the grid (1 step: z_0 = z_1 - u(z_1, 0, 1)); the denoiser is called with ``sigma_to``.
"""

from __future__ import annotations

import torch

from ..schedules.flow import flow_time
from .state import check_sigmas, noise, start


def with_mid_sigmas(sigmas: torch.Tensor, mid_sigmas) -> torch.Tensor:
    """The grid with its interior levels replaced by ``mid_sigmas`` (decreasing, inside (0, sigma_0))."""
    if mid_sigmas is None:
        return sigmas
    mids = [float(s) for s in (mid_sigmas if isinstance(mid_sigmas, list | tuple) else [mid_sigmas])]
    if len(mids) != len(sigmas) - 2:
        raise ValueError(
            f"mid_sigmas: {len(sigmas) - 2} intermediate noise level(s) for {len(sigmas) - 1} steps, got {mids}"
        )
    grid = check_sigmas([float(sigmas[0]), *mids, 0.0])
    if grid[1:-1].numel() and not bool((grid[1:-1] > 0).all()):
        raise ValueError(f"mid_sigmas must be > 0, got {mids}")
    return grid


@torch.no_grad()
def consistency(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, stochastic=True, mid_sigmas=None):
    """Multistep consistency sampling (the module docstring); ``denoiser`` is the consistency function f."""
    sigmas, cond = with_mid_sigmas(check_sigmas(sigmas), mid_sigmas), cond or {}
    x = start(x, sigmas)
    x0 = x
    for i in range(len(sigmas) - 1):
        if i > 0:
            s, s_prev = float(sigmas[i]), float(sigmas[i - 1])
            direction = noise(x, generator) if stochastic else (x - x0) / s_prev
            x = x0 + s * direction
        x0 = denoiser(x, sigmas[i], **cond)
        if callback:
            callback(i, x0, x0)
    return x0


@torch.no_grad()
def meanflow(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """MeanFlow's jump from each time of the grid to the next (the module docstring); state x~ = z_t / (1 - t)."""
    sigmas, cond = check_sigmas(sigmas), cond or {}
    x = start(x, sigmas)
    ts = flow_time(sigmas).tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoiser(x, sigmas[i], sigma_to=sigmas[i + 1], **cond)
        zt = x * (1 - t)
        z_next = zt + (t_next - t) * (zt - x0) / t  # = z_t - (t - r) u, as x0 = z_t - t u
        x = z_next / (1 - t_next)
        if callback:
            callback(i, x, x0)
    return x
