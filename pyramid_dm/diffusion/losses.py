"""Diffusion training loss: a weighted MSE between the network output F and its target F*.

Weightings are stated on the x0-MSE ||D - x0||^2 and applied to the network's own MSE through
||F - F*||^2 = ||D - x0||^2 / c_out^2 (see :mod:`.parameterization`), with SNR = 1 / sigma~^2:
  uniform:  the network's own MSE unweighted (x0-weight 1 / c_out^2: SNR for eps, 1 + SNR for v, 1 for x0;
            DDPM's L_simple)
  min_snr:  x0-weight min(SNR, gamma) (Hang et al., ICCV 2023): min(SNR, gamma) / SNR on eps, / (SNR + 1) on v
  edm:      x0-weight (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, EDMLoss): unweighted for edm networks
"""

from __future__ import annotations

import torch
from torch import Tensor

from .parameterization import coefficients

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
