"""Score SDEs (Song et al., ICLR 2021): the VE and VP SDEs, their reverse-time samplers and predictor-corrector
sampling, over the denoiser (score = (D(x~; sigma) - x~) / sigma^2, :func:`.state.score`).

The SDEs, in their own coordinates (Song et al. 2021, Eq. 30-32; VE with the geometric sigma(t) of NCSN):
    VE: dx = sqrt(d[sigma^2(t)]/dt) dw,               x_t | x0 ~ N(x0, (sigma(t)^2 - sigma(0)^2) I)
    VP: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,   x_t | x0 ~ N(m_t x0, (1 - m_t^2) I),
        beta(t) = beta_0 + t (beta_1 - beta_0),   m_t = exp(-1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0)
The engine's schedules ``ve`` and (continuous) ``linear`` are these marginals. The samplers below run in sigma space
x~ = x_t / alpha_t, where every schedule is the VE process x0 + sigma~ eps (Karras et al. 2022, Sec. 4): rescaling
by alpha_t changes neither the marginals nor the reverse process, only its discretization. Between grid levels
sigma > sigma' of the reverse SDE dx~ = -d[sigma^2] score + sqrt(d[sigma^2]) dw:
- reverse diffusion (Song et al. 2021, Eq. 47, the ancestral VE step): x~' = x~ + (sigma^2 - sigma'^2) score +
  sqrt(sigma^2 - sigma'^2) z;
- Euler-Maruyama (Song et al. 2021, ``EulerMaruyamaPredictor``): the rate d[sigma^2] = 2 sigma d sigma taken at
  sigma: x~' = x~ + 2 sigma (sigma - sigma') score + sqrt(2 sigma (sigma - sigma')) z.
The step to sigma' = 0 is the denoising step x~' = D(x~; sigma) (Song et al.'s ``noise_removal``; for reverse
diffusion it is the step itself). PC (Song et al. 2021, Alg. 2/3): at each level ``corrector_steps`` Langevin
corrector steps (:func:`.langevin.langevin_correct`, signal-to-noise ratio ``snr``), then the predictor. NFE: steps x
(1 + corrector_steps).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..parameterization import DenoiserFn
from .langevin import check_count, check_snr, langevin_correct
from .state import check_sigmas, noise, score, start


def reverse_diffusion(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, generator) -> Tensor:
    var = sigma**2 - sigma_next**2
    x_mean = x + var / sigma**2 * (x0 - x)
    return x_mean + math.sqrt(var) * noise(x, generator) if sigma_next > 0 else x_mean


def euler_maruyama_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, generator) -> Tensor:
    if sigma_next == 0:
        return x0
    var = 2 * sigma * (sigma - sigma_next)
    return x + var / sigma**2 * (x0 - x) + math.sqrt(var) * noise(x, generator)


PREDICTORS = {"reverse_diffusion": reverse_diffusion, "euler_maruyama": euler_maruyama_step}


def _pc(denoiser, x, sigmas, cond, generator, callback, predictor: str, snr: float, corrector_steps: int):
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {sorted(PREDICTORS)}")
    sigmas, cond = check_sigmas(sigmas), cond or {}
    corrector_steps = check_count("corrector_steps", corrector_steps, 0)
    if corrector_steps:
        check_snr(snr)
    x = start(x, sigmas)
    for i in range(len(sigmas) - 1):
        for _ in range(corrector_steps):
            x = langevin_correct(denoiser, x, sigmas[i], snr, cond, generator)
        _, x0 = score(denoiser, x, sigmas[i], cond)
        x = PREDICTORS[predictor](x, x0, float(sigmas[i]), float(sigmas[i + 1]), generator)
        if callback:
            callback(i, x, x0)
    return x


@torch.no_grad()
def pc(
    denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None,
    snr: float = 0.16, corrector_steps: int = 1, predictor: str = "reverse_diffusion",
):  # fmt: skip
    """Predictor-corrector sampling (Song et al. 2021, Alg. 2): Langevin corrector then the reverse-diffusion (or
    ``euler_maruyama``) predictor at every level; ``corrector_steps=0`` is the predictor alone."""
    return _pc(denoiser, x, sigmas, cond, generator, callback, predictor, snr, corrector_steps)


@torch.no_grad()
def euler_maruyama(denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None):
    """The reverse SDE by Euler-Maruyama (Song et al. 2021, Sec. 4.1), one call per step."""
    return _pc(denoiser, x, sigmas, cond, generator, callback, "euler_maruyama", 0.16, 0)


def pc_nfe(steps: int, *, corrector_steps: int, **_) -> int:
    """PC's denoiser calls (its options with :func:`pc`'s defaults filled in by the sampler record)."""
    return steps * (1 + int(corrector_steps))
