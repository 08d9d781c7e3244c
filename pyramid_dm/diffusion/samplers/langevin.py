"""Annealed Langevin dynamics (NCSN: Song & Ermon 2019, Alg. 1; with the final denoising step of NCSNv2, Song & Ermon
2020, and Jolicoeur-Martineau et al. 2021) and the Langevin corrector of score SDEs (Song et al. 2021, Alg. 4),
both over the denoiser through score(x~; sigma) = (D(x~; sigma) - x~) / sigma^2 (:func:`.state.score`).

ALD on the levels sigma_0 > ... > sigma_L of the grid (its last entry, 0, is not a level): at level i the step is
alpha_i = eps sigma_i^2 / sigma_L^2, and ``n_steps_each`` times x <- x + alpha_i / 2 score + sqrt(alpha_i) z. The step
relative to the level's variance, alpha_i / sigma_i^2 = eps / sigma_L^2, is the same at every level; it must lie in
(0, 2): beyond 2 a step overshoots the mode of N(mu, sigma_i^2) (x - mu is multiplied by 1 - alpha / (2 sigma^2) < 0).
``step_size`` is eps; None takes eps = 0.2 sigma_L^2, NCSN's ratio (2e-5 at sigma_L = 0.01). The final denoising
step returns D(x; sigma_L) = x + sigma_L^2 score: one more call.

Langevin corrector: eps = 2 (r ||z|| / ||score||)^2, x <- x + eps score + sqrt(2 eps) z, with r the signal-to-noise
ratio of the step (``snr``; Song et al. use 0.16 for VE models on CIFAR-10). The norms are per sample (Song et al.'s
code averages them over the batch), so a sample does not depend on the others in its batch. r must lie in (0, 1]:
above 1 the drift outweighs the noise and the step is no longer Langevin dynamics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..parameterization import DenoiserFn
from .state import check_sigmas, noise, per_sample_norm, score, start

NCSN_STEP_RATIO = 0.2  # eps / sigma_L^2 of NCSN (Song & Ermon 2019): 2e-5 at sigma_L = 0.01


def check_step_size(step_size: float, sigma_last: float) -> float:
    ratio = step_size / sigma_last**2
    if not 0 < ratio < 2:
        raise ValueError(
            f"Langevin step_size {step_size:g} is outside its valid range (0, {2 * sigma_last**2:.4g}): the step at "
            f"the smallest level sigma_L = {sigma_last:.4g} must satisfy 0 < step_size / sigma_L^2 < 2 (here "
            f"{ratio:.4g}); NCSN uses 0.2 sigma_L^2"
        )
    return step_size


def check_snr(snr: float) -> float:
    if not 0 < snr <= 1:
        raise ValueError(f"Langevin corrector snr {snr:g} is outside its valid range (0, 1] (Song et al. use 0.16)")
    return snr


def check_count(name: str, value, low: int) -> int:
    if int(value) != value or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value}")
    return int(value)


def langevin_correct(denoiser: DenoiserFn, x: Tensor, sigma: Tensor, snr: float, cond: dict, generator) -> Tensor:
    """One Langevin corrector step at noise level ``sigma`` (Song et al. 2021, Alg. 4, per-sample norms)."""
    g, _ = score(denoiser, x, sigma, cond)
    z = noise(x, generator)
    eps = 2 * (snr * per_sample_norm(z) / per_sample_norm(g).clamp(min=1e-30)) ** 2
    return x + eps * g + (2 * eps).sqrt() * z


@torch.no_grad()
def ald(
    denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None,
    step_size: float | None = None, n_steps_each: int = 5, final_denoise: bool = True,
):  # fmt: skip
    """Annealed Langevin dynamics over the grid's levels (see the module docstring). NFE: levels x ``n_steps_each``,
    plus one for the final denoising step."""
    sigmas, cond = check_sigmas(sigmas), cond or {}
    n_steps_each = check_count("ald n_steps_each", n_steps_each, 1)
    levels = sigmas[:-1]
    sigma_last = float(levels[-1])
    eps = check_step_size(NCSN_STEP_RATIO * sigma_last**2 if step_size is None else float(step_size), sigma_last)
    x = start(x, sigmas)
    for i, sigma in enumerate(levels):
        alpha = eps * float(sigma) ** 2 / sigma_last**2
        for _ in range(n_steps_each):
            g, x0 = score(denoiser, x, sigma, cond)
            x = x + alpha / 2 * g + math.sqrt(alpha) * noise(x, generator)
        if callback:
            callback(i, x, x0)
    return denoiser(x, levels[-1], **cond) if final_denoise else x


def ald_nfe(steps: int, *, n_steps_each: int, final_denoise: bool, **_) -> int:
    """ALD's denoiser calls (its options with :func:`ald`'s defaults filled in by the sampler record)."""
    return steps * int(n_steps_each) + bool(final_denoise)
