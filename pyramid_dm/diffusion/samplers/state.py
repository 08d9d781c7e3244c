"""The sampler state shared by every sampler: where it starts, its fresh noise, the grid it walks (sigma space,
Karras et al. 2022: x~ = x0 + sigma~ eps). Pure helpers, so that samplers written in other files share one home."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def start(x: Tensor, sigmas: Tensor) -> Tensor:
    """x~ at the top of the grid from unit noise ``x``: x sqrt(1 + sigma_0^2) (the variance-preserving x_T = noise in
    sigma space), float64 (float32 on MPS), as in EDM."""
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    return x.to(dtype) * math.sqrt(1 + float(sigmas[0]) ** 2)


def noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Fresh N(0, I) shaped and typed like ``x``, drawn in float32 from ``generator`` (reproducible on every device)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)


def check_sigmas(sigmas: Tensor) -> Tensor:
    """``sigmas`` as a float64 CPU tensor, or a ValueError unless it decreases to a final 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if sigmas.ndim != 1 or len(sigmas) < 2 or sigmas[-1] != 0 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be a decreasing 1-d grid of at least 2 noise levels ending at 0")
    return sigmas


def score(denoiser, x: Tensor, sigma: Tensor, cond: dict) -> tuple[Tensor, Tensor]:
    """(score, x0_hat) at ``sigma``: grad log p_sigma(x~) = (D(x~; sigma) - x~) / sigma^2 (Tweedie's formula; Karras
    et al. 2022, Eq. 3), so that every parameterization is a score model."""
    x0 = denoiser(x, sigma, **cond)
    return (x0 - x) / float(sigma) ** 2, x0


def per_sample_norm(x: Tensor) -> Tensor:
    """||x|| per sample, shaped to broadcast over ``x``."""
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
