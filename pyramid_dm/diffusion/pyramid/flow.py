"""Pyramidal Flow Matching (Jin et al., ICLR 2025, Sec. 3; ``jy0205/Pyramid-Flow``,
``diffusion_schedulers/scheduling_flow_matching.py``): one straight-path trajectory x_t = (1 - t) x0 + t eps split into
S stages, coarse first; stage k runs at resolution r_k = r_{k+1} / 2, so the noisy early part of the trajectory is
generated at low resolution and only the last stage at full resolution.

Stage k covers the nominal window [b_{k+1}, b_k] of 1 = b_0 > ... > b_S = 0 and runs its own path from its start
point (local time 1) to its end point (local time 0), with the same noise eps_k at both ends:
    end:   x_end_k   = (1 - e_k) Down_k(x0) + e_k eps_k,                  e_k = b_{k+1}
    start: x_start_k = (1 - a_k) Up(Down_{k-1}(x0)) + a_k eps_k,          a_k = 2 b_k / (1 + b_k) (a_0 = 1)
Down_k averages to r_k, Up is nearest upsampling by 2, and eps_k = Down_k(eps) r_S / r_k is the full-resolution noise
averaged and rescaled to unit variance (so eps_{k-1} = 2 Down(eps_k)). The stage's target is the velocity
x_start_k - x_end_k along x = tau x_start_k + (1 - tau) x_end_k; the engine trains it as a flow model whose "clean"
end is x_end_k and whose "noise" is x_start_k (:mod:`.parameterization`, ``flow``; the network sees the trajectory time
e_k + (a_k - e_k) tau).

At a jump the end of stage k - 1 is upsampled and renoised onto stage k's start (the paper's Eq. 15 with gamma = 1/3,
the code's ``corrected_sigma``):
    x_start_k = Up(x_end_{k-1}) / (1 + e) + sqrt(3) e / (1 + e) n,      e = e_{k-1} = b_k,
n ~ N(0, 1) per pixel with correlation -1/3 inside each 2x2 block (its block means are 0). Nearest upsampling makes
the noise e Up(eps_{k-1}) perfectly correlated inside a block; n cancels that correlation, so the sum is white noise
of standard deviation 2 e / (1 + e) = a_k whose 2x2 average is the coarse noise (:func:`renoise`). That fixes a_k:
the fine stage starts noisier (a_k > b_k) because nearest upsampling spreads one coarse noise value over 4 pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .context import snap_to, upsample_to


def check_bounds(bounds: Sequence[float], num_stages: int) -> list[float]:
    """Stage boundaries 1 = b_0 > b_1 > ... > b_S = 0 for ``num_stages`` stages (they cover the trajectory once)."""
    b = [float(v) for v in bounds]
    if len(b) != num_stages + 1:
        raise ValueError(f"{num_stages} stages need {num_stages + 1} stage bounds (from 1 down to 0), got {b}")
    if not all(math.isfinite(v) for v in b):
        raise ValueError(f"stage bounds must be finite numbers, got {b}")
    if b[0] != 1.0 or b[-1] != 0.0:
        raise ValueError(
            f"stage bounds must start at 1 (pure noise) and end at 0 (the data) to cover the trajectory, got {b}"
        )
    if any(lo >= hi for hi, lo in zip(b, b[1:])):
        raise ValueError(f"stage bounds must decrease strictly (stage windows may not overlap or be empty), got {b}")
    return b


def uniform_bounds(num_stages: int) -> list[float]:
    """Equal windows: 1, (S - 1) / S, ..., 0 (Pyramid Flow's default ``stage_range``)."""
    return [1.0 - k / num_stages for k in range(num_stages + 1)]


def stage_windows(bounds: Sequence[float]) -> list[tuple[float, float]]:
    """(e_k, a_k) per stage: its end time and its corrected start time (see the module docstring)."""
    return [(lo, 1.0 if k == 0 else 2 * hi / (1 + hi)) for k, (hi, lo) in enumerate(zip(bounds, bounds[1:]))]


def stage_noise(noise: Tensor, resolution: int) -> Tensor:
    """Full-resolution unit noise averaged to ``resolution`` and rescaled to unit variance."""
    return snap_to(noise, resolution) * (noise.shape[-1] / resolution)


def stage_pair(
    levels: Sequence[Tensor], noise: Tensor, stage: int, window: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """(x_end, x_start) of ``stage`` from the clean ``levels`` (Down_k(x0), coarse first) and the full-resolution
    ``noise``."""
    e, a = window
    z = levels[stage]
    eps = stage_noise(noise, z.shape[-1])
    coarse = upsample_to(levels[stage - 1], z.shape[-1]) if stage else torch.zeros_like(z)
    return (1 - e) * z + e * eps, (1 - a) * coarse + a * eps


def block_noise(shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
    """N(0, 1) per pixel with correlation -1/3 between the pixels of each 2x2 block (block means exactly 0):
    sqrt(4/3) (z - block mean of z), z white."""
    z = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return (math.sqrt(4 / 3) * (z - upsample_to(snap_to(z, z.shape[-1] // 2), z.shape[-1]))).to(dtype)


def renoise(x_end: Tensor, end_time: float, generator: torch.Generator | None = None) -> Tensor:
    """The next stage's start point from the end point ``x_end`` of a stage that ended at ``end_time``."""
    up = upsample_to(x_end, 2 * x_end.shape[-1])
    n = block_noise(up.shape, generator, up.device, up.dtype)
    return up / (1 + end_time) + math.sqrt(3) * end_time / (1 + end_time) * n
