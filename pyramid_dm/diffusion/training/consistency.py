"""Consistency models: the consistency function as a wrapper of any denoiser, and Easy Consistency Tuning (ECT).

- **Boundary condition** (Song et al. 2023, "Consistency Models", Eq. 5-7; Song & Dhariwal 2024, iCT): a consistency
  function f(x~; sigma) maps every point of an ODE trajectory to its end, and must equal x~ at sigma_min exactly.
  Any denoiser D of this framework (eps, x0, v, EDM or flow, :mod:`.parameterization`) becomes one by
      f(x~; sigma) = x~ + kappa(sigma) (D(x~; sigma) - x~),   kappa(sigma) = clamp((sigma - sigma_min) / sigma, 0, 1),
  which is x~ itself (no network output survives) for sigma <= sigma_min and tends to D above it. For an EDM network
  this is iCT's c_out = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2) exactly, with
  c_skip = (sigma_data^2 + sigma sigma_min) / (sigma^2 + sigma_data^2) in place of iCT's
  sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2) (both 1 at sigma_min). Because it keeps the teacher's own
  parameterization, tuning starts at the teacher's denoiser for eps, v and flow teachers too: ECT's insight that a
  diffusion model is the consistency model of a zero gap.
- **ECT** (Geng, Pokle, Luo, Lin, Kolter, ICLR 2025, "Consistency Models Made Easy"; code ``locuslab/ect``,
  ``ECMLoss``): t ~ lognormal(P_mean, P_std) (-1.1, 2.0), and the adaptive difference schedule
      r = max(0, t (1 - q^-(stage + 1) (1 + k sigmoid(-b t)))),   stage = step // double_every,
  so the gap t - r shrinks by q (2) every ``double_every`` steps (k = 8, b = 1; at stage 0 most r are 0, which is
  diffusion pre-training). x_t = x0 + t eps and x_r = x0 + r eps share eps and the dropout mask; the target is
  sg(f(x_r; r)) (x0 where r = 0), and the loss (sqrt(||f(x_t; t) - target||^2 + c^2) - c) / (t - r): c = 0 is ECT's
  default (the L2 norm: the adaptive weighting of p = 1/2), c > 0 iCT's pseudo-Huber loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..parameterization import Denoiser, WrappedDenoiser, expand

FLOAT32_RESOLUTION = 2.0**-23  # a relative gap below this leaves x_r == x_t in float32: a zero loss


class ConsistencyFunction(WrappedDenoiser):
    """f(x~; sigma) = x~ + kappa(sigma) (D(x~; sigma) - x~) of a :class:`~.parameterization.Denoiser` (see the module
    docstring); ``sigma_min`` defaults to the smallest noise level of the denoiser's schedule. Called like D."""

    def __init__(self, denoiser: Denoiser, sigma_min: float | None = None):
        super().__init__(denoiser)
        self.sigma_min = float(sigma_min if sigma_min is not None else denoiser.schedule.sigma_range()[0])
        if not self.sigma_min > 0:
            raise ValueError(f"consistency sigma_min must be > 0, got {self.sigma_min}")

    def kappa(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return ((sigma - self.sigma_min) / sigma).clamp(0, 1)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        kappa = expand(self.kappa(sigma), x)
        d = self.denoiser(x, sigma, **cond)
        return torch.where(kappa > 0, x + kappa.to(x.dtype) * (d - x), x)


@dataclass(frozen=True)
class GapSchedule:
    """ECT's adaptive difference schedule r(t, stage) (the module docstring)."""

    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    double_every: int = 1000

    def __post_init__(self):
        if not self.q > 1:
            raise ValueError(f"objective_options.q must be > 1 (the gap shrinks by q per stage), got {self.q}")
        if self.double_every < 1:
            raise ValueError(f"objective_options.double_every must be >= 1 step, got {self.double_every}")

    def stage(self, step: int) -> int:
        return int(step) // self.double_every

    def decay(self, stage: int) -> float:
        return self.q ** -(stage + 1)

    def r(self, t: Tensor, stage: int) -> Tensor:
        adj = 1 + self.k * torch.sigmoid(-self.b * t)
        return (t * (1 - self.decay(stage) * adj)).clamp(min=0)

    def last_useful_step(self) -> int:
        """The first step whose smallest relative gap (t - r) / t = q^-(stage + 1) (as t grows) is down to float32's
        resolution, where x_r and x_t become equal and the loss vanishes."""
        stage = math.ceil(-math.log(FLOAT32_RESOLUTION) / math.log(self.q)) - 1
        return stage * self.double_every

    def check(self, max_steps: int | None) -> None:
        """A ValueError when training for ``max_steps`` would run past the gap's float32 resolution."""
        if max_steps is None or max_steps < 0:
            return
        end = self.last_useful_step()
        if max_steps > end:
            raise ValueError(
                f"ECT's gap t - r = t q^-(stage+1) (1 + k sigmoid(-b t)) falls to float32 resolution at step {end} "
                f"(q {self.q:g}, double_every {self.double_every}), before trainer.max_steps {max_steps}: the "
                f"consistency loss would be zero from there on; raise objective_options.double_every to at least "
                f"{math.ceil(max_steps * self.double_every / end)} or lower q"
            )


def lognormal_sigma(u: Tensor, mean: float, std: float) -> Tensor:
    """sigma = exp(mean + std Phi^-1(u)) from u ~ U[0, 1) (float64): EDM's and ECT's training noise levels."""
    u = torch.as_tensor(u, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
    return (mean + std * math.sqrt(2) * torch.erfinv(2 * u - 1)).exp()


def ect_loss(f_t: Tensor, target: Tensor, t: Tensor, r: Tensor, huber_c: float = 0.0) -> Tensor:
    """Per-sample (sqrt(||f_t - target||^2 + c^2) - c) / (t - r) (the module docstring)."""
    sq = (f_t.float() - target.float()).pow(2).flatten(1).sum(1)
    dist = (sq + huber_c**2).sqrt() - huber_c if huber_c > 0 else sq.clamp(min=1e-30).sqrt()
    return dist / (t - r).to(dist)
