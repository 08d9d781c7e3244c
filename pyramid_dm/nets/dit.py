"""DiT: a diffusion transformer over image patches (Peebles & Xie, "Scalable Diffusion Models with Transformers",
ICCV 2023; reference code facebookresearch/DiT ``models.py``).

Patchify (a p x p convolution with stride p), add fixed 2-D sin-cos positions, run ``depth`` transformer blocks
conditioned by adaLN-Zero on the noise embedding plus the class embedding, then a modulated final layer back to
patches. The adaLN projections and the final layer start at zero, so the network outputs zero at initialisation and
every block starts as the identity. Attention runs through ``scaled_dot_product_attention`` (flash / memory-efficient
kernels where the device has them). No learned sigma: the engine's parameterization needs one output per input
channel. It knows nothing about diffusion: ``c_noise`` is a per-sample scalar, embedded sinusoidally after
multiplying by ``time_scale``, like :class:`~pyramid_dm.nets.unet.UNet`.

Pyramids: one transformer body serves every level (:data:`level_channels` > 1 entry); each level has its own patch
embedding (its latent's channels plus its context's, so the coarser levels' context enters as extra input channels
before patchify: the context is already on the level's grid, so concatenation costs no tokens, where context tokens
would lengthen every attention), its own patch size, final layer and positions (computed for its grid), and a learned
level embedding plus an embedding of the context's augmentation noise level added to the conditioning.

Against diffusers' ``DiTTransformer2DModel`` with the same weights the outputs agree (``tests/test_dit.py``); the one
difference is diffusers' timestep features (``downscale_freq_shift=1``), where this follows the DiT code (0).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .levels import PerLevel
from .slimmable import SlimLinear, at_width, check_heads, check_widths, current_width, heads_at
from .unet import embed_interval, sinusoidal_embedding


@functools.lru_cache(maxsize=32)
def sincos_positions(dim: int, grid: int) -> Tensor:
    """(grid * grid, dim) fixed 2-D positions of DiT/MAE: for the token at row i, column j, the 1-D sin-cos features
    of j then of i, each [sin, cos] over dim / 4 frequencies 1 / 10000^(k / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"dit: hidden_size {dim} must be a multiple of 4 for 2-D sin-cos positions")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def one_d(p: Tensor) -> Tensor:
        out = p.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_d(cols), one_d(rows)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention; at a width below 1 (slimmable) it runs the prefix of its heads."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim, inner = heads, head_dim, heads * head_dim
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        heads = heads_at(self.heads, current_width())
        kept = heads * self.head_dim
        full = heads == self.heads  # whole weights at full width: a slice's backward would copy every gradient

        def kept_rows(t: Tensor) -> Tensor:
            return t if full else t[:kept]

        q, k, v = (
            F.linear(x, kept_rows(f.weight), kept_rows(f.bias)).view(b, n, heads, -1).transpose(1, 2)
            for f in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, kept)
        return F.linear(out, self.to_out.weight if full else self.to_out.weight[:, :kept], self.to_out.bias)


class Block(nn.Module):
    """Pre-norm attention and MLP, each modulated (shift, scale) and gated by the conditioning (adaLN-Zero)."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = round(dim * mlp_ratio)  # slimmable: a prefix of the hidden units below width 1
        self.mlp = nn.Sequential(
            SlimLinear(dim, hidden, slim_in=False), nn.GELU(approximate="tanh"), SlimLinear(hidden, dim, slim_out=False)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))  # zero-initialised by DiT

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, patch * patch * channels)  # both zero-initialised by DiT

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=1)
        return self.proj(modulate(self.norm(x), shift, scale))


class DiT(PerLevel):
    """Args:
    level_channels / level_sizes: each level's channels and grid side, coarse first (one entry: pixel or latent).
    context_channels: each level's context channels (0: none); defaults to none.
    num_classes: class-conditional (the null class, for guidance, is ``num_classes``) or None.
    patch_size: one for all levels, or one per level; it must divide the level's side.
    hidden_size, depth, num_heads, mlp_ratio: the transformer (DiT-S is 384, 12, 6, 4); ``head_dim`` defaults to
        hidden_size / num_heads.
    width_multipliers: a slimmable supernet (step-aware models): at width w every block runs the first
        round(num_heads w) heads and the first slim(hidden w) MLP units (multiples of 8); the residual stream, the
        embeddings and the final layers stay whole. At width 1 it is the plain network, bit for bit.
    interval_embedding: a second time input, ``interval=`` (MeanFlow's t - r), embedded like the noise and added to
        the conditioning; zero-initialised, so the network starts as the one without it.
    """

    checkpoint_units = (Block,)  # what activation checkpointing wraps (nets/checkpointing.py)

    def __init__(
        self,
        level_channels: Sequence[int],
        level_sizes: Sequence[int],
        context_channels: Sequence[int] | None = None,
        num_classes: int | None = None,
        patch_size: int | Sequence[int] = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        head_dim: int | None = None,
        time_channels: int = 256,
        time_scale: float = 1000.0,
        width_multipliers: Sequence[float] | None = None,
        interval_embedding: bool = False,
    ):
        super().__init__()
        self.setup_levels("dit", level_channels, level_sizes, context_channels, patch_size, num_classes, hidden_size)
        context, patches = self.context_channels, self.patches
        if head_dim is None and hidden_size % num_heads:
            raise ValueError(f"dit: hidden_size {hidden_size} does not split into num_heads {num_heads} heads")
        head_dim = head_dim or hidden_size // num_heads
        widths = check_widths(width_multipliers, "dit: width_multipliers") if width_multipliers else None
        self.width_multipliers = widths
        check_heads("dit", widths, [num_heads])
        sincos_positions(hidden_size, 1)  # checks hidden_size
        self.grids = [size // p for size, p in zip(level_sizes, patches)]
        self.time_channels, self.time_scale = time_channels, time_scale
        self.embed_patches = nn.ModuleList(
            nn.Conv2d(c + k, hidden_size, p, stride=p) for c, k, p in zip(level_channels, context, patches)
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(time_channels, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.aug_mlp = (
            nn.Sequential(nn.Linear(time_channels, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            if any(context)
            else None
        )
        self.interval_mlp = (
            nn.Sequential(nn.Linear(time_channels, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            if interval_embedding
            else None
        )
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, head_dim, mlp_ratio) for _ in range(depth))
        self.finals = nn.ModuleList(FinalLayer(hidden_size, p, c) for c, p in zip(level_channels, patches))
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's: xavier linears and patch embeddings, N(0, 0.02) embeddings and noise MLPs, then adaLN-Zero (every
        modulation and the final layers at zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for conv in self.embed_patches:
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        for emb in (self.class_emb, self.level_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        for mlp in (self.time_mlp, self.aug_mlp):
            if mlp is not None:
                nn.init.normal_(mlp[0].weight, std=0.02)
                nn.init.normal_(mlp[2].weight, std=0.02)
        if self.interval_mlp is not None:
            nn.init.normal_(self.interval_mlp[0].weight, std=0.02)
        zeroed = [block.ada[1] for block in self.blocks] + [m for f in self.finals for m in (f.ada, f.proj)]
        zeroed += [self.interval_mlp[2]] if self.interval_mlp is not None else []
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(
        self, c_noise: Tensor, class_labels: Tensor | None, level: int, aug_t: Tensor | None, interval=None
    ) -> Tensor:
        b = c_noise.shape[0]
        c = self.time_mlp(sinusoidal_embedding(c_noise * self.time_scale, self.time_channels))
        if interval is not None or self.interval_mlp is not None:
            c = c + embed_interval(self.interval_mlp, interval, c_noise, self.time_scale, self.time_channels)
        c = self.add_label_and_level(c, class_labels, level)
        if self.context_channels[level]:
            aug = torch.zeros(b, device=c.device, dtype=c.dtype) if aug_t is None else aug_t.to(c.device, c.dtype)
            c = c + self.aug_mlp(sinusoidal_embedding(aug.expand(b) * self.time_scale, self.time_channels))
        return c

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        class_labels: Tensor | None = None,
        *,
        level: int = 0,
        context: Tensor | None = None,
        aug_t: Tensor | None = None,
        interval: Tensor | None = None,
        width: float | None = None,
    ) -> Tensor:
        """Level ``level``'s output for its noisy latent ``x`` (B, C, H, W), given ``context`` (B, context channels,
        H, W) noised at ``aug_t`` (None = clean), at ``width`` (None: the caller's context); shaped like ``x``."""
        with at_width(self.width_multipliers, width):
            return self._forward(x, c_noise, class_labels, level, context, aug_t, interval)

    def _forward(self, x, c_noise, class_labels, level, context, aug_t, interval=None) -> Tensor:
        b, _, h, w = x.shape
        p = self.patches[level]
        x = self.level_input(x, level, context)
        # contiguous: a transposed stream would stay transposed through every residual add, and each LayerNorm
        # (forward and backward) would copy it
        tokens = self.embed_patches[level](x).flatten(2).transpose(1, 2).contiguous()
        # traced (not looked up in the cache, which Dynamo would warn of) inside a compiled graph
        positions = sincos_positions.__wrapped__ if torch.compiler.is_compiling() else sincos_positions
        tokens = tokens + positions(tokens.shape[-1], h // p).to(tokens)
        c = self.condition(c_noise.expand(b), class_labels, level, aug_t, interval).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.finals[level](tokens, c)  # (B, N, p * p * C)
        channels, g = self.level_channels[level], h // p
        out = out.reshape(b, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, channels, h, w)
