"""Diffusion training loss: a weighted MSE between the network output F and its target F*.

Weightings are stated on the x0-MSE ||D - x0||^2 and applied to the network's own MSE through
||F - F*||^2 = ||D - x0||^2 / c_out^2 (see :mod:`.parameterization`), with SNR = 1 / sigma~^2:
  uniform:  the network's own MSE unweighted (x0-weight 1 / c_out^2: SNR for eps, 1 + SNR for v, 1 for x0;
            DDPM's L_simple)
  min_snr:  x0-weight min(SNR, gamma) (Hang et al., ICCV 2023): min(SNR, gamma) / SNR on eps, / (SNR + 1) on v
  edm:      x0-weight (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, EDMLoss): unweighted for edm networks
  soft_min_snr: x0-weight 1 / (sigma^2 + 1 / gamma), a smooth min(SNR, gamma) (Crowson et al., "Scalable
            High-Resolution Pixel-Space Image Synthesis with Hourglass Diffusion Transformers", ICML 2024; k-diffusion
            ``layers.Denoiser`` weighting ``soft-min-snr``, which is this with gamma = 1 / sd^2), the weighting the
            transformer bodies train with; gamma is ``min_snr_gamma``
Flow matching's time distributions (``logit_normal``, SD3's shifts) are training times (:mod:`.times`), weighted
``uniform`` on the velocity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ...registry import Registry
from ..parameterization import Denoiser, coefficients, expand, network_input, network_target
from ..schedules.base import NoiseSchedule
from .times import TRAINING_TIMES, TrainingTimes


class LossWeighting:
    """A weighting: the per-sample weight on the network's own MSE at noise level ``sigma`` given its ``c_out``
    (float64). A new weighting is one subclass registered in :data:`WEIGHTINGS`; it reads its settings from the
    model's options by name (:meth:`from_options`)."""

    name = "weighting"

    @classmethod
    def from_options(cls, options: Mapping) -> LossWeighting:
        return cls()

    def weight(self, sigma: Tensor, c_out: Tensor, sigma_data: float) -> Tensor:
        raise NotImplementedError


class Uniform(LossWeighting):
    name = "uniform"

    def weight(self, sigma, c_out, sigma_data):
        return torch.ones_like(sigma)


class MinSNR(LossWeighting):
    name = "min_snr"

    def __init__(self, gamma: float = 5.0):
        self.gamma = float(gamma)

    @classmethod
    def from_options(cls, options):
        return cls(options.get("min_snr_gamma", 5.0))

    def weight(self, sigma, c_out, sigma_data):
        return (sigma**-2).clamp(max=self.gamma) * c_out**2


class EDMWeighting(LossWeighting):
    name = "edm"

    def weight(self, sigma, c_out, sigma_data):
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2 * c_out**2


class SoftMinSNR(MinSNR):
    name = "soft_min_snr"

    def weight(self, sigma, c_out, sigma_data):
        return c_out**2 / (sigma**2 + 1.0 / self.gamma)


WEIGHTINGS: Registry[type[LossWeighting]] = Registry("loss weighting")
for _cls in (Uniform, MinSNR, EDMWeighting, SoftMinSNR):
    WEIGHTINGS.register(_cls.name, _cls)


def loss_weight(
    prediction: str, sigma: Tensor, weighting: str = "uniform", gamma: float = 5.0, sigma_data: float = 0.5
) -> Tensor:
    """Per-sample weight on the MSE of the network output of ``prediction`` at noise level ``sigma`` (float64)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    _, c_out, _ = coefficients(prediction, sigma, sigma_data)
    return WEIGHTINGS.lookup(weighting).from_options({"min_snr_gamma": gamma}).weight(sigma, c_out, sigma_data)


def diffusion_loss(out: Tensor, tgt: Tensor, weight: Tensor) -> Tensor:
    """Per-sample weighted MSE (mean over all but the batch dimension); reduce it yourself."""
    mse = (out.float() - tgt.float()).pow(2).flatten(1).mean(1)
    return weight.to(mse) * mse


class DiffusionLoss:
    """The training objective as one object: the training-time distribution (:mod:`.training_times`), the
    parameterization's target, the weighting, and the weights of a pyramid's levels.
    It runs the network through the same :class:`~.parameterization.Denoiser` the samplers call
    (``denoiser.network``: F(c_in x~; c_noise)), so training and sampling share one path; :meth:`x0_level_loss`
    is the same loss written on the x0 scale through D itself, w / c_out^2 ||D(x0 + sigma eps; sigma) - x0||^2.
    """

    def __init__(self, times: TrainingTimes, weighting: LossWeighting, level_weights: Sequence[float] | None = None):
        if level_weights is not None and (min(level_weights) < 0 or sum(level_weights) <= 0):
            raise ValueError(f"level_weights must be >= 0 with a positive sum, got {list(level_weights)}")
        self.times, self.weighting = times, weighting
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]

    @classmethod
    def build(
        cls, training_noise: str, loss_weighting: str, options: Mapping | None = None, level_weights=None
    ) -> DiffusionLoss:
        """From the registered names (``training_noise``, ``loss_weighting``), each reading its settings from the
        model's ``options`` (e.g. ``lognormal_mean``, ``min_snr_gamma``)."""
        options = options or {}
        try:
            times = TRAINING_TIMES.lookup(training_noise)
        except ValueError:
            raise ValueError(f"training_noise {training_noise!r} is not one of {sorted(TRAINING_TIMES)}") from None
        try:
            weighting = WEIGHTINGS.lookup(loss_weighting)
        except ValueError:
            raise ValueError(f"loss_weighting {loss_weighting!r} is not one of {sorted(WEIGHTINGS)}") from None
        return cls(times.from_options(options), weighting.from_options(options), level_weights)

    def weights(self, num_levels: int) -> Tensor:
        """The levels' loss weights, normalised to sum 1 (equal by default)."""
        w = torch.tensor(self.level_weights or [1.0] * num_levels, dtype=torch.float32)
        return w / w.sum()

    def noise_levels(self, schedule: NoiseSchedule, u: Tensor) -> tuple[Tensor, Tensor]:
        """(t, sigma~) of a training batch from u ~ U[0, 1)."""
        return self.times.draw(schedule, u)

    def weight(self, denoiser: Denoiser, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        _, c_out, _ = denoiser.parameterization.coefficients(sigma, denoiser.sigma_data)
        return self.weighting.weight(sigma, c_out, denoiser.sigma_data)

    def level_loss(
        self, denoiser: Denoiser, x0: Tensor, noise: Tensor, u: Tensor, teacher: Denoiser | None = None, **cond
    ) -> Tensor:
        """Per-sample loss of one level: x0 noised with ``noise`` at the level u maps to, network form. With a
        ``teacher`` (in-place distillation, Yu & Huang 2019), plus the same weighted MSE to the teacher network's
        detached output on the same input."""
        t, sigma = self.noise_levels(denoiser.schedule, u)
        p, sd = denoiser.prediction, denoiser.sigma_data
        x_in = network_input(p, x0, noise, sigma, sd)
        out = denoiser.network(x_in, sigma, t, **cond)
        weight = self.weight(denoiser, sigma)
        loss = diffusion_loss(out, network_target(p, x0, noise, sigma, sd), weight)
        if teacher is not None:
            with torch.no_grad():
                target = teacher.network(x_in, sigma, t, **cond)
            loss = loss + diffusion_loss(out, target, weight)
        return loss

    def x0_level_loss(self, denoiser: Denoiser, x0: Tensor, noise: Tensor, u: Tensor, **cond) -> Tensor:
        """:meth:`level_loss` computed through D on the x0 scale (the network sees t(sigma), not the drawn t)."""
        _, sigma = self.noise_levels(denoiser.schedule, u)
        _, c_out, _ = coefficients(denoiser.prediction, sigma, denoiser.sigma_data)
        x_tilde = x0 + expand(sigma, x0).to(x0.dtype) * noise
        return diffusion_loss(denoiser(x_tilde, sigma, **cond), x0, self.weight(denoiser, sigma) / c_out**2)
