"""The Karras noise ramp (Karras et al. 2022, Eq. 5): the one home of the rho-interpolation between sigma_max and
sigma_min, used by the EDM schedule (a uniform t is this ramp) and by the ``karras`` sampling grid.

    sigma(r) = (sigma_max^(1/rho) + r (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,   r in [0, 1] (r = 0: sigma_max)
"""

from __future__ import annotations

import torch
from torch import Tensor


def karras_sigma(ramp: Tensor, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """sigma at ramp position ``r`` (float64): sigma_max at r = 0, sigma_min at r = 1."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + torch.as_tensor(ramp, dtype=torch.float64) * (lo - hi)) ** rho


def karras_ramp(sigma: Tensor, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The inverse of :func:`karras_sigma`: the ramp position of ``sigma``, clamped to [0, 1]."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((torch.as_tensor(sigma, dtype=torch.float64) ** (1 / rho) - hi) / (lo - hi)).clamp(0, 1)
