"""Latent regularisers of the autoencoders: a vector quantiser and a diagonal Gaussian (KL) posterior.

VQ (van den Oord et al. 2017, VQ-VAE; VQGAN's ``VectorQuantizer2``): z_q = nearest codebook entry, straight-through
gradient z + (z_q - z).detach(), commitment loss beta ||z - sg(z_q)||^2. The codebook is learnt either by its own loss
||sg(z) - z_q||^2 (``ema=False``) or by exponential moving averages of the assigned vectors (``ema=True``, VQ-VAE
Appendix A.1, Laplace-smoothed counts). Codes unused for ``dead_after`` consecutive updates are restarted on random
encoder outputs of the current batch (Dhariwal et al. 2020, Jukebox). Perplexity exp(H(code usage)) and the
fraction of codes used in the batch are reported.

KL (Kingma & Welling 2014; LDM's ``DiagonalGaussianDistribution``): the encoder gives mean and log-variance;
z = mean + std eps; KL(q || N(0, I)) summed over latent dims, averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        dead_after: int = 100,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.num_codes, self.dim, self.beta, self.ema, self.decay = num_codes, dim, beta, ema, decay
        self.dead_after, self.eps = dead_after, eps
        self.codebook = nn.Parameter(torch.randn(num_codes, dim) / dim**0.5, requires_grad=not ema)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("idle", torch.zeros(num_codes, dtype=torch.long))

    def indices(self, z: Tensor) -> Tensor:
        """Nearest code of every vector of ``z`` (B, dim, H, W) -> (B, H, W)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        cb = self.codebook.float()
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]
        return dist2.argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, idx: Tensor) -> Tensor:
        return self.codebook[idx].permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(z_q with straight-through gradient, commitment (+ codebook) loss, statistics)."""
        idx = self.indices(z)
        zq = self.lookup(idx).to(z.dtype)
        loss = self.beta * F.mse_loss(z, zq.detach())
        if not self.ema:
            loss = loss + F.mse_loss(zq, z.detach())
        counts = torch.bincount(idx.flatten(), minlength=self.num_codes).float()
        if self.training:
            self._update(z.detach(), idx, counts)
        probs = counts / counts.sum()
        stats = {
            "perplexity": torch.exp(-(probs * torch.log(probs + 1e-10)).sum()),
            "usage": (counts > 0).float().mean(),
        }
        return z + (zq - z).detach(), loss, stats

    @torch.no_grad()
    def _update(self, z: Tensor, idx: Tensor, counts: Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx.flatten(), flat)
        if dist.is_available() and dist.is_initialized():  # every rank keeps the same codebook
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        if self.ema:
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
            self.codebook.data.copy_(self.ema_sum / smoothed[:, None])
        self.idle.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.idle >= self.dead_after).nonzero().flatten()
        if len(dead):
            # Rank 0's choice of replacements is broadcast, so the codebooks stay identical on every rank.
            pick = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(pick, 0)
            self.codebook.data[dead] = pick.to(self.codebook.dtype)
            self.ema_sum[dead], self.ema_count[dead] = pick, 1.0
            self.idle[dead] = 0


class DiagonalGaussian(nn.Module):
    """Splits 2C channels into mean and log-variance; samples z (or returns the mean) and the KL to N(0, I)."""

    def forward(self, moments: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
        return z, kl, {"posterior_std": torch.exp(0.5 * logvar).mean()}
