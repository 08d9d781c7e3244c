"""Diffusion training loss: weighted MSE between the network output and its target.

Min-SNR-gamma (Hang et al., ICCV 2023) clips the effective x0-weight at gamma: on the x0-MSE the weight is
min(SNR, gamma); expressed on the eps-MSE it is min(SNR, gamma) / SNR and on the v-MSE min(SNR, gamma) / (SNR + 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .parameterization import check_prediction

WEIGHTINGS = ("uniform", "min_snr")


def loss_weight(prediction: str, snr: Tensor, weighting: str = "uniform", gamma: float = 5.0) -> Tensor:
    """Per-sample weight on the MSE of ``prediction`` for the given SNR."""
    check_prediction(prediction)
    if weighting == "uniform":
        return torch.ones_like(snr)
    if weighting == "min_snr":
        clipped = snr.clamp(max=gamma)
        return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")


def diffusion_loss(
    out: Tensor, tgt: Tensor, snr: Tensor, prediction: str, weighting: str = "uniform", gamma: float = 5.0
) -> Tensor:
    """Per-sample weighted MSE (mean over all but the batch dimension); reduce it yourself."""
    mse = (out.float() - tgt.float()).pow(2).flatten(1).mean(1)
    return loss_weight(prediction, snr.float(), weighting, gamma) * mse
