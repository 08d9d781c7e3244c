"""Coarse-first sampling of a single-scale pixel model, with no training: the multi-scale question asked of a model
that was never trained multi-scale.

The noisy early part of the trajectory carries only coarse structure, so it is generated at 1/``factor`` of the
resolution: the model samples a coarse image (``coarse_steps`` on its own grid, at about 1/factor^2 of the cost per
call), which is upsampled (nearest, as Pyramidal Flow Matching's jumps, Jin et al. 2025) and renoised to the
full-resolution grid's noise level sigma_k (x~ = Up(x0_coarse) + sigma_k eps, eps white: SDEdit's renoising, Meng et
al. 2022; the noise hides the detail the upsampling lacks), then the last ``steps - k`` steps of that grid run at full
resolution. Fewer full-resolution calls for some coarse ones: whether that beats the same model with fewer steps at
equal sampling FLOPs is what ``benchmarks/multiscale/coarse_first.py`` measures. The network is applied to images
smaller than it was trained on (a convolutional or windowed-attention body takes them; the content looks zoomed out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion import CountingDenoiser, get_sampler, sampling_sigmas
from ..diffusion import sample as run_sampler
from ..errors import UserError
from ..flops import count_flops
from .engine import FLOP_BATCH


@dataclass
class CoarseFirstCost:
    coarse_calls: int  # denoiser calls per sample at the coarse size
    fine_calls: int  # and at full size
    coarse_flops: float  # FLOPs of one call for one sample
    fine_flops: float

    @property
    def flops_per_sample(self) -> float:
        return self.coarse_calls * self.coarse_flops + self.fine_calls * self.fine_flops


def check(engine, factor: int) -> tuple[int, int, int]:
    """The full-size (C, H, W) of a single-level pixel-space model whose sides ``factor`` divides."""
    if engine.num_levels != 1 or not engine.first_stage.pixel_space:
        raise UserError("coarse-first sampling is for a single-scale pixel-space model (a pyramid has its own levels)")
    c, h, w = engine.level_shapes[0]
    if factor < 2 or h % factor or w % factor:
        raise UserError(f"coarse-first factor {factor}: it must be >= 2 and divide the image size {h}x{w}")
    return c, h, w


@torch.no_grad()
def coarse_first_sample(
    engine,
    num_samples: int,
    steps: int,
    start: int,
    coarse_steps: int,
    sampler: str = "dpmpp_2m",
    factor: int = 2,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    net: nn.Module | None = None,
) -> tuple[Tensor, CoarseFirstCost]:
    """Images in [-1, 1]: a coarse sample (``coarse_steps``) upsampled by ``factor`` and renoised to sigma_``start``
    of the ``steps``-step full-resolution grid, whose remaining ``steps - start`` steps finish it; the cost per sample
    (calls at each size, FLOPs per call by ``flop_counter``)."""
    c, h, w = check(engine, factor)
    if not 0 < start < steps or coarse_steps < 1:
        raise UserError(
            f"coarse-first: need 0 < start < steps and coarse_steps >= 1, got {start}, {steps}, {coarse_steps}"
        )
    spec = get_sampler(sampler)
    schedule, device = engine.schedules[0], engine.device
    cond = engine.conditioning(labels)
    den = CountingDenoiser(engine.denoiser(0, net))
    noise = torch.randn((num_samples, c, h // factor, w // factor), generator=generator, device=device)
    coarse = run_sampler(den, noise, schedule, sampler, coarse_steps, cond=cond, generator=generator)
    coarse_calls = den.rows // num_samples
    sigmas = sampling_sigmas(schedule, steps, spec.grid)[start:]
    sigma = float(sigmas[0])
    eps = torch.randn((num_samples, c, h, w), generator=generator, device=device)
    x = F.interpolate(coarse.float(), scale_factor=factor, mode="nearest") + sigma * eps
    out = spec(den, x / math.sqrt(1 + sigma**2), sigmas, cond=cond, generator=generator)  # start() undoes the scale
    calls = den.rows // num_samples
    raw, sigma_one = den.denoiser, torch.tensor(1.0, dtype=torch.float64)  # the network, uncounted
    flop_cond = engine.conditioning(engine.sample_labels(0, FLOP_BATCH))
    per_call = [
        float(count_flops(lambda z=z: raw(z, sigma_one, **flop_cond))) / FLOP_BATCH
        for z in (torch.zeros((FLOP_BATCH, c, *size), device=device) for size in ((h // factor, w // factor), (h, w)))
    ]
    cost = CoarseFirstCost(coarse_calls, calls - coarse_calls, *per_call)
    return out.float().clamp(-1, 1), cost
