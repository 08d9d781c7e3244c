"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

D_cfg(x; sigma) = D(x; sigma | null) + s (D(x; sigma | c) - D(x; sigma | null)); the same extrapolation on eps or v
gives the same step, since they are affine in x0_hat at fixed (x, sigma). s = 1 is the conditional model.
Options:
- ``interval`` (Kynkäänniemi et al. 2024): guide only for sigma in (lo, hi]; elsewhere the conditional model alone
  (one call instead of two).
- ``rescale`` phi (Lin et al. 2024, Sec. 3.4): D_r = D_cfg std(D_c) / std(D_cfg) per sample, output
  phi D_r + (1 - phi) D_cfg; counters the over-saturation of large scales.
A guided step calls the denoiser twice (conditional, then unconditional), so a CountingDenoiser inside counts 2 NFE.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .parameterization import DenoiserFn


class ClassifierFreeGuidance:
    def __init__(
        self,
        denoiser: DenoiserFn,
        scale: float,
        uncond: dict,
        interval: tuple[float, float] = (0.0, math.inf),
        rescale: float = 0.0,
    ):
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        lo, hi = interval
        if not 0 <= lo < hi:
            raise ValueError(f"guidance interval must satisfy 0 <= lo < hi, got {interval}")
        if not 0 <= rescale <= 1:
            raise ValueError(f"guidance rescale must lie in [0, 1], got {rescale}")
        self.denoiser, self.scale, self.uncond = denoiser, float(scale), uncond
        self.interval, self.rescale = (float(lo), float(hi)), float(rescale)

    def active(self, sigma: Tensor) -> Tensor:
        lo, hi = self.interval
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (sigma > lo) & (sigma <= hi)

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        d_c = self.denoiser(x, sigma, **cond)
        on = self.active(sigma)
        if self.scale == 1.0 or not bool(on.any()):
            return d_c
        d_u = self.denoiser(x, sigma, **self.uncond)
        d = d_u + self.scale * (d_c - d_u)
        if self.rescale > 0:
            dims = list(range(1, x.ndim))
            ratio = d_c.std(dim=dims, keepdim=True) / d.std(dim=dims, keepdim=True).clamp(min=1e-12)
            d = self.rescale * d * ratio + (1 - self.rescale) * d
        if on.ndim == 0:
            return d
        return torch.where(on.to(x.device).reshape(-1, *([1] * (x.ndim - 1))), d, d_c)
