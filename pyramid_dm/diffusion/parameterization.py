"""What the network predicts, and the wrapper that turns it into a denoiser.

With x_t = alpha x0 + sigma eps (alpha^2 + sigma^2 = 1) and v = alpha eps - sigma x0 (Salimans & Ho 2022):
  x0 = (x_t - sigma eps) / alpha = alpha x_t - sigma v,    eps = (x_t - alpha x0) / sigma = sigma x_t + alpha v.
A *denoiser* is any callable D(x_t, t, **cond) -> x0_hat; every sampler in this package works on denoisers only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from .schedules import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")


class Denoiser(Protocol):
    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor: ...


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {list(PREDICTIONS)}")
    return prediction


def _bcast(a: Tensor, like: Tensor) -> Tensor:
    a = torch.as_tensor(a, device=like.device, dtype=like.dtype)
    return a.view(-1, *([1] * (like.ndim - 1))) if a.ndim == 1 else a


def target(prediction: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target for ``prediction`` in {eps, x0, v}."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return _bcast(alpha, x0) * eps - _bcast(sigma, x0) * x0
    return check_prediction(prediction)


def to_x0(prediction: str, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if prediction == "eps":
        return (x_t - s * out) / a
    if prediction == "x0":
        return out
    if prediction == "v":
        return a * x_t - s * out
    return check_prediction(prediction)


def to_eps(prediction: str, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if prediction == "eps":
        return out
    if prediction == "x0":
        return (x_t - a * out) / s
    if prediction == "v":
        return s * x_t + a * out
    return check_prediction(prediction)


class PredictionDenoiser(nn.Module):
    """Wraps a network ``net(x_t, t, **cond)`` that predicts eps, x0 or v into a denoiser returning x0_hat.

    The network sees the noisy input and t in [0, 1] unchanged; it knows nothing else about diffusion.
    ``clip_x0`` clamps x0_hat to the data range [-1, 1] (pixel space only).
    """

    def __init__(self, net: nn.Module | Callable, schedule: NoiseSchedule, prediction: str = "eps", clip_x0=False):
        super().__init__()
        self.net, self.schedule = net, schedule
        self.prediction, self.clip_x0 = check_prediction(prediction), clip_x0

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).expand(x.shape[0])
        alpha, sigma = self.schedule.alpha_sigma(t)
        x0 = to_x0(self.prediction, self.net(x, t, **cond).to(x.dtype), x, alpha, sigma)
        return x0.clamp(-1, 1) if self.clip_x0 else x0
