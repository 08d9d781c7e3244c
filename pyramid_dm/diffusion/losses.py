"""Diffusion training loss: a weighted MSE between the network output F and its target F*.

Weightings are stated on the x0-MSE ||D - x0||^2 and applied to the network's own MSE through
||F - F*||^2 = ||D - x0||^2 / c_out^2 (see :mod:`.parameterization`), with SNR = 1 / sigma~^2:
  uniform:  the network's own MSE unweighted (x0-weight 1 / c_out^2: SNR for eps, 1 + SNR for v, 1 for x0;
            DDPM's L_simple)
  min_snr:  x0-weight min(SNR, gamma) (Hang et al., ICCV 2023): min(SNR, gamma) / SNR on eps, / (SNR + 1) on v
  edm:      x0-weight (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, EDMLoss): unweighted for edm networks
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .parameterization import Denoiser, coefficients, expand, network_input, network_target
from .schedules import TRAINING_NOISE, NoiseSchedule, training_noise_levels

WEIGHTINGS = ("uniform", "min_snr", "edm")


def loss_weight(
    prediction: str, sigma: Tensor, weighting: str = "uniform", gamma: float = 5.0, sigma_data: float = 0.5
) -> Tensor:
    """Per-sample weight on the MSE of the network output of ``prediction`` at noise level ``sigma`` (float64)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    _, c_out, _ = coefficients(prediction, sigma, sigma_data)
    if weighting == "uniform":
        return torch.ones_like(sigma)
    if weighting == "min_snr":
        return (sigma**-2).clamp(max=gamma) * c_out**2
    if weighting == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2 * c_out**2
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")


def diffusion_loss(out: Tensor, tgt: Tensor, weight: Tensor) -> Tensor:
    """Per-sample weighted MSE (mean over all but the batch dimension); reduce it yourself."""
    mse = (out.float() - tgt.float()).pow(2).flatten(1).mean(1)
    return weight.to(mse) * mse


class DiffusionLoss:
    """The training objective as one object: the training-noise draw (:func:`~.schedules.training_noise_levels`), the
    parameterization's target, the weighting, and the weights of a pyramid's levels.

    It runs the network through the same :class:`~.parameterization.Denoiser` the samplers call
    (``denoiser.network``: F(c_in x~; c_noise)), so training and sampling share one path; :meth:`x0_level_loss`
    is the same loss written on the x0 scale through D itself, w / c_out^2 ||D(x0 + sigma eps; sigma) - x0||^2.
    """

    def __init__(
        self,
        training_noise: str,
        lognormal_mean: float,
        lognormal_std: float,
        weighting: str,
        min_snr_gamma: float,
        level_weights: Sequence[float] | None = None,
        logit_normal: tuple[float, float] = (0.0, 1.0),
        mode_scale: float = 1.29,
    ):
        if training_noise not in TRAINING_NOISE:
            raise ValueError(f"training_noise {training_noise!r} is not one of {list(TRAINING_NOISE)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"loss_weighting {weighting!r} is not one of {list(WEIGHTINGS)}")
        if level_weights is not None and (min(level_weights) < 0 or sum(level_weights) <= 0):
            raise ValueError(f"level_weights must be >= 0 with a positive sum, got {list(level_weights)}")
        self.training_noise, self.lognormal_mean, self.lognormal_std = training_noise, lognormal_mean, lognormal_std
        self.noise_params = {  # the (p_mean, p_std) of each training-noise density (training_noise_levels)
            "lognormal": (lognormal_mean, lognormal_std),
            "logit_normal": tuple(logit_normal),
            "mode": (mode_scale, 0.0),
        }
        self.weighting, self.min_snr_gamma = weighting, min_snr_gamma
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]

    def weights(self, num_levels: int) -> Tensor:
        """The levels' loss weights, normalised to sum 1 (equal by default)."""
        w = torch.tensor(self.level_weights or [1.0] * num_levels, dtype=torch.float32)
        return w / w.sum()

    def noise_levels(self, schedule: NoiseSchedule, u: Tensor) -> tuple[Tensor, Tensor]:
        """(t, sigma~) of a training batch from u ~ U[0, 1)."""
        params = self.noise_params.get(self.training_noise, ())
        return training_noise_levels(schedule, u, self.training_noise, *params)

    def weight(self, denoiser: Denoiser, sigma: Tensor) -> Tensor:
        return loss_weight(denoiser.prediction, sigma, self.weighting, self.min_snr_gamma, denoiser.sigma_data)

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
