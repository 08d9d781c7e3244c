"""Pyramid (coarse-to-fine) diffusion math: how a level sees the finished coarser levels.

Native layout (ours): level l runs at its own resolution; its context is the coarser levels upsampled (nearest) to
its grid. Conditioning augmentation (cascaded diffusion, Ho et al. 2022, Sec. 4.2): the context is noised
variance-preservingly at a level a of the level's schedule, c_a = alpha_a c + sigma_a eps, with a given to the network,
so that at sampling time the model tolerates the imperfect coarse levels it generated itself.

Frido layout (Fan et al. 2023): every level runs at the finest resolution; the coarser levels, nearest-upsampled,
are lerped with noise, (1 - tau) c + tau eps, tau = ``noise_mix`` fixed and not given to the network (Frido's
``noise_mix_ratio``); after a level is generated it is snapped back to its own resolution by average pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..parameterization import expand
from ..schedules.base import NoiseSchedule


def upsample_to(x: Tensor, size: int) -> Tensor:
    """Nearest upsampling to ``size`` (average pooling undoes it exactly)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="nearest")


def snap_to(x: Tensor, size: int) -> Tensor:
    """Average pooling to ``size`` (Frido's projection of a level generated on a finer grid)."""
    return x if x.shape[-1] == size else F.avg_pool2d(x, x.shape[-1] // size)


def context_of(levels: list[Tensor], size: int) -> Tensor | None:
    """The finished coarser ``levels`` upsampled to ``size`` and stacked on channels (None for the first level)."""
    return torch.cat([upsample_to(z, size) for z in levels], dim=1) if levels else None


def augment_context(context: Tensor, schedule: NoiseSchedule, t: Tensor, noise: Tensor) -> Tensor:
    """alpha_t c + sigma_t eps on the given schedule, per-sample ``t`` in [0, 1] (t = 0: the clean context)."""
    alpha, sigma = schedule.vp_alpha_sigma(torch.as_tensor(t, dtype=torch.float64).cpu())
    return expand(alpha, context).to(context.dtype) * context + expand(sigma, context).to(context.dtype) * noise


def mix_context(context: Tensor, tau: float, noise: Tensor) -> Tensor:
    """Frido's lerp (1 - tau) c + tau eps (not variance preserving)."""
    return (1 - tau) * context + tau * noise
