"""PyU-Net: one UNet body for every level of a pyramid, with per-level heads (Frido, Fan et al. 2023, Sec. 3.3).

Level l's input is its own noisy latent concatenated with a context (the finished coarser levels, upsampled to its
grid). Each level has its own input head (a 3x3 conv over those channels) and output head (a conv to the level's
channels, zero-initialised); a learned level embedding and an embedding of the context's augmentation noise level
(cascaded diffusion's conditioning augmentation, Ho et al. 2022) are added to the time embedding. The body is shared
by all levels or one per level (``shared_body``); with ``spade`` its residual blocks are also modulated by the
context (SPADE, as Frido's ``use_SPADE_norm``). Like :class:`UNet` it knows nothing about diffusion, and like it is
slimmable (``width_multipliers``, ``forward(..., width=w)``): heads keep the levels' and contexts' channels full.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .slimmable import SlimConv2d, SlimEmbedding, SlimLinear
from .unet import ResBlock, SelfAttention, UNet, sinusoidal_embedding


class PyramidUNet(nn.Module):
    """Args:
    level_channels: channels of each level's latent, coarse first.
    context_channels: channels of each level's context (0 for a level without one).
    level_sizes: the resolution each level runs at (places attention in per-level bodies).
    shared_body: one body for all levels (Frido) or one per level.
    spade: SPADE modulation of every residual block by the context (through a per-level 3x3 conv to
        ``spade_channels``).
    unet: the body's layout (``base_channels``, ``channel_mult``, ... of :class:`UNet`).
    """

    checkpoint_units = (ResBlock, SelfAttention)  # its body's blocks (nets/checkpointing.py)

    def __init__(
        self,
        level_channels: Sequence[int],
        context_channels: Sequence[int],
        level_sizes: Sequence[int],
        num_classes: int | None = None,
        shared_body: bool = True,
        spade: bool = False,
        spade_channels: int = 32,
        **unet,
    ):
        super().__init__()
        if not len(level_channels) == len(context_channels) == len(level_sizes):
            raise ValueError("level_channels, context_channels and level_sizes need one entry per level")
        self.level_channels, self.context_channels = list(level_channels), list(context_channels)
        spade_ch = spade_channels if spade else 0
        sizes = list(level_sizes) if not shared_body else [max(level_sizes)]
        self.bodies = nn.ModuleList(
            UNet(image_size=s, num_classes=num_classes, headless=True, spade_channels=spade_ch, **unet) for s in sizes
        )
        body = self.bodies[0]
        stem, emb_dim = body.stem_channels, body.time_mlp[-1].out_features
        self.heads_in = nn.ModuleList(
            SlimConv2d(c + k, stem, 3, padding=1, slim_in=False) for c, k in zip(level_channels, context_channels)
        )
        self.heads_out = nn.ModuleList(SlimConv2d(stem, c, 3, padding=1, slim_out=False) for c in level_channels)
        for head in self.heads_out:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.level_emb = SlimEmbedding(len(level_channels), emb_dim)
        self.aug_mlp = nn.Sequential(
            SlimLinear(body.time_channels, emb_dim, slim_in=False), nn.SiLU(), SlimLinear(emb_dim, emb_dim)
        )
        self.width_multipliers = body.width_multipliers
        self.spade_in = (
            nn.ModuleList(nn.Conv2d(k, spade_ch, 3, padding=1) if k else nn.Identity() for k in self.context_channels)
            if spade
            else None
        )

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
        """Level ``level``'s output for its noisy latent ``x`` given ``context`` (B, context_channels[level], H, W),
        noised at ``aug_t`` (per sample, in [0, 1]; None = clean), at ``width`` (None: the caller's context)."""
        with self.bodies[0].at_width(width):
            return self._forward(x, c_noise, class_labels, level, context, aug_t, interval)

    def _forward(self, x, c_noise, class_labels, level, context, aug_t, interval=None) -> Tensor:
        want = self.context_channels[level]
        got = 0 if context is None else context.shape[1]
        if got != want:
            raise ValueError(f"level {level} takes a context of {want} channels, got {got}")
        body = self.bodies[level if len(self.bodies) > 1 else 0]
        b = x.shape[0]
        emb = body.embed(c_noise.expand(b), class_labels, interval)
        emb = emb + self.level_emb(torch.full((b,), level, device=x.device, dtype=torch.long))
        if want:
            dtype = torch.promote_types(c_noise.dtype, torch.float32)
            aug = torch.zeros(b, device=x.device, dtype=dtype) if aug_t is None else aug_t.to(x.device, dtype).expand(b)
            emb = emb + self.aug_mlp(sinusoidal_embedding(aug * body.time_scale, body.time_channels))
            context = context.to(x.dtype)
            x = torch.cat([x, context], dim=1)
        spatial = self.spade_in[level](context) if self.spade_in is not None and want else None
        h = body.body(self.heads_in[level](x), emb.to(x.dtype), spatial)
        return self.heads_out[level](F.silu(body.norm_out(h)))
