"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

D_cfg(x; sigma) = D(x; sigma | null) + s (D(x; sigma | c) - D(x; sigma | null)); the same extrapolation on eps or v
gives the same step, since they are affine in x0_hat at fixed (x, sigma). s = 1 is the conditional model.
Options:
- ``interval`` (Kynkäänniemi et al. 2024): guide only for sigma in (lo, hi]; elsewhere the conditional model alone
  (one call instead of two).
- ``rescale`` phi (Lin et al. 2024, Sec. 3.4): D_r = D_cfg std(D_c) / std(D_cfg) per sample, output
  phi D_r + (1 - phi) D_cfg; counters the over-saturation of large scales.
- ``batched`` (sgm's ``VanillaCFG``): where a step guides, the conditional and unconditional branches run as one
  call on a batch of 2B (cond and uncond concatenated: tensors with a batch dimension are stacked, the rest must
  agree). Without it, two calls of B.
A guided step is two network evaluations either way (``pyramid_dm.engine.wrappers.Count`` counts rows, so 2 NFE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..parameterization import DenoiserFn


class ClassifierFreeGuidance:
    def __init__(
        self,
        denoiser: DenoiserFn,
        scale: float,
        uncond: dict,
        interval: tuple[float, float] = (0.0, math.inf),
        rescale: float = 0.0,
        batched: bool = False,
    ):
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        lo, hi = interval
        if not 0 <= lo < hi:
            raise ValueError(f"guidance interval must satisfy 0 <= lo < hi, got {interval}")
        if not 0 <= rescale <= 1:
            raise ValueError(f"guidance rescale must lie in [0, 1], got {rescale}")
        self.denoiser, self.scale, self.uncond = denoiser, float(scale), uncond
        self.interval, self.rescale, self.batched = (float(lo), float(hi)), float(rescale), batched

    def active(self, sigma: Tensor) -> Tensor:
        lo, hi = self.interval
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (sigma > lo) & (sigma <= hi)

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        on = self.active(sigma)
        if self.scale == 1.0 or not bool(on.any()):
            return self.denoiser(x, sigma, **cond)
        if self.batched:
            d_c, d_u = self.both(x, sigma, cond)
        else:
            d_c = self.denoiser(x, sigma, **cond)
            d_u = self.denoiser(x, sigma, **self.uncond)
        d = d_u + self.scale * (d_c - d_u)
        if self.rescale > 0:
            dims = list(range(1, x.ndim))
            ratio = d_c.std(dim=dims, keepdim=True) / d.std(dim=dims, keepdim=True).clamp(min=1e-12)
            d = self.rescale * d * ratio + (1 - self.rescale) * d
        if on.ndim == 0:
            return d
        return torch.where(on.to(x.device).reshape(-1, *([1] * (x.ndim - 1))), d, d_c)

    def both(self, x: Tensor, sigma: Tensor, cond: dict) -> tuple[Tensor, Tensor]:
        """(D(x | cond), D(x | uncond)) from one call on the concatenated batch."""
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        both = {key: _stack(key, cond.get(key), self.uncond.get(key), n) for key in {*cond, *self.uncond}}
        d = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]) if sigma.ndim else sigma, **both)
        return d[:n], d[n:]


def _stack(key: str, a, b, n: int):
    if isinstance(a, Tensor) and a.ndim and a.shape[0] == n:
        return torch.cat([a, b.to(a.device)])
    if isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b.to(a.device)) or a is b or a == b:
        return a
    raise ValueError(f"batched guidance: conditioning {key!r} differs between the branches but has no batch dimension")
