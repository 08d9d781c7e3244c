"""Classifier guidance (Dhariwal & Nichol 2021, Alg. 1-2) as a denoiser wrapper, for every sampler.

Guiding the score toward class y by a noise-conditional classifier p(y | x~, sigma) with scale s,
grad log p_s(x~ | y) = grad log p(x~) + s grad log p(y | x~, sigma), is, through D = x~ + sigma^2 score,
    D_guided(x~; sigma) = D(x~; sigma) + s sigma^2 grad_x~ log p(y | x~, sigma)
(Dhariwal & Nichol's eps_hat - s sqrt(1 - abar) grad, written on x0 in sigma space). s = 0 is the unguided denoiser,
exactly (the classifier is not called). Each guided call costs the denoiser plus one classifier forward and
backward; ``calls`` counts the classifier's calls (per batch), as :class:`~.samplers.CountingDenoiser` counts NFE.

:class:`NoisyClassifierFn` is the classifier's preconditioning (the network knows nothing about diffusion): it sees
the variance-preserving input x~ / sqrt(1 + sigma^2) and c_noise = ln(sigma) / 4 (sigma clamped to
[``SIGMA_FLOOR``, ``SIGMA_CEIL``]), so that it reads noise levels, not one schedule's time, and serves any
diffusion model of the same data whose noise levels it was trained over.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..parameterization import DenoiserFn, expand

SIGMA_FLOOR, SIGMA_CEIL = 1e-3, 1e4  # the clean image (sigma = 0) is read as sigma = 1e-3

LogProbFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x~, sigma, labels) -> log p(labels | x~, sigma), (B,)


def classifier_inputs(x_tilde: Tensor, sigma: Tensor, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """(network input, c_noise) of a noise-conditional classifier at x~ = x0 + sigma eps (see the module docstring);
    c_noise in ``dtype`` (float32, or float64 for a float64 network)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x_tilde.device)
    c_in = expand(1 / (1 + sigma**2).sqrt(), x_tilde).to(x_tilde.dtype)
    c_noise = sigma.clamp(SIGMA_FLOOR, SIGMA_CEIL).log() / 4
    return c_in * x_tilde, c_noise.to(dtype).expand(x_tilde.shape[0])


class NoisyClassifierFn:
    """log p(y | x~, sigma) of a network ``net(x_in, c_noise) -> logits`` (a wrapper, not a module: the network's
    weights stay the owner's)."""

    def __init__(self, net: nn.Module):
        self.net = net

    def logits(self, x_tilde: Tensor, sigma: Tensor) -> Tensor:
        p = next(self.net.parameters())
        x_in, c_noise = classifier_inputs(x_tilde, sigma, torch.promote_types(p.dtype, torch.float32))
        return self.net(x_in.to(p.dtype), c_noise.to(p.device))

    def __call__(self, x_tilde: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        logp = F.log_softmax(self.logits(x_tilde, sigma).float(), dim=-1)
        return logp.gather(1, labels.to(logp.device).long()[:, None])[:, 0]


class ClassifierGuidance:
    """``denoiser`` guided toward ``labels`` by ``log_prob`` (a :data:`LogProbFn`) with scale ``scale`` >= 0."""

    def __init__(self, denoiser: DenoiserFn, log_prob: LogProbFn, scale: float, labels: Tensor):
        if not scale >= 0 or math.isinf(scale):
            raise ValueError(f"classifier guidance scale must be a finite number >= 0, got {scale}")
        self.denoiser, self.log_prob, self.scale, self.labels = denoiser, log_prob, float(scale), labels
        self.calls = 0

    def gradient(self, x: Tensor, sigma: Tensor) -> Tensor:
        """grad_x~ log p(y | x~, sigma) per sample, in the dtype of ``x``."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(xg, sigma, self.labels).sum(), xg)
        self.calls += 1
        return grad.to(x.dtype)

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        d = self.denoiser(x, sigma, **cond)
        if self.scale == 0:
            return d
        s2 = expand(torch.as_tensor(sigma, dtype=torch.float64, device=x.device) ** 2, x).to(x.dtype)
        return d + self.scale * s2 * self.gradient(x, sigma)
