"""The encoder half of the UNet with a classification head (Dhariwal & Nichol 2021, App. C: ADM's classifier is the
UNet's downsampling trunk and middle block, then GroupNorm-SiLU, global average pooling and a linear layer).

A plain network of (x, c_noise) -> logits: what c_noise means (a noise level) is the guidance wrapper's business
(:class:`~pyramid_dm.diffusion.guidance.classifier.NoisyClassifierFn`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .unet import ResBlock, SelfAttention, Stage, group_norm, sinusoidal_embedding


class EncoderClassifier(nn.Module):
    """Args as :class:`~pyramid_dm.nets.UNet`'s encoder (``channel_mult``: one 2x downsampling between stages),
    ``num_classes`` outputs."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 32,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (),
        num_heads: int = 1,
        dropout: float = 0.0,
        norm_groups: int = 32,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        n_down = len(channel_mult) - 1
        if image_size % (2**n_down):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{n_down} for {len(channel_mult)} stages")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        widths = [base_channels * m for m in channel_mult]
        emb_dim, self.base_channels, self.time_scale = 4 * base_channels, base_channels, time_scale
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        args = dict(emb_dim=emb_dim, heads=num_heads, dropout=dropout, groups=norm_groups)
        self.down, self.downsample, ch = nn.ModuleList(), nn.ModuleList(), widths[0]
        for i, w in enumerate(widths):
            blocks = [(ch if j == 0 else w, w) for j in range(num_res_blocks)]
            self.down.append(Stage(blocks, attn=(image_size >> i) in attention_resolutions, **args))
            ch = w
            if i < n_down:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout, norm_groups)
        self.mid_attn = SelfAttention(ch, num_heads, norm_groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout, norm_groups)
        self.norm_out, self.head = group_norm(ch, norm_groups), nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.time_mlp(sinusoidal_embedding(c_noise.expand(x.shape[0]) * self.time_scale, self.base_channels))
        h, emb = self.conv_in(x), emb.to(x.dtype)
        for i, stage in enumerate(self.down):
            for res, attn in zip(stage.res, stage.attn):
                h = attn(res(h, emb))
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))
