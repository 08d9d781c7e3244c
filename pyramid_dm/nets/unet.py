"""UNet for images (the DDPM layout of Ho et al. 2020; same block structure as diffusers' ``UNet2DModel``).

A plain network of (x, c_noise, class_labels): it knows nothing about diffusion. ``c_noise`` is any per-sample
scalar (the engine passes t in [0, 1]); it is embedded sinusoidally after multiplying by ``time_scale``.

Every layer is slimmable (:mod:`.slimmable`): with ``width_multipliers`` the network also runs as its prefix
sub-networks (``forward(..., width=w)`` or ``use_width``); at width 1 it is exactly the plain network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .slimmable import Parts, SlimConv2d, SlimEmbedding, SlimLinear, at_width, check_widths
from .slimmable import group_norm as slim_norm


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """A plain GroupNorm in gcd(groups, channels) groups (the autoencoder's; the UNet's are slimmable)."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal features [cos, sin] of a (B,) tensor (Vaswani et al. 2017)."""
    half = dim // 2
    dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for a float64 network
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=dtype) / half)
    args = x.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def embed_interval(
    mlp: nn.Module | None, interval: Tensor | None, c_noise: Tensor, scale: float, dim: int, features=None
) -> Tensor:
    """The embedding of a second time input (MeanFlow's interval t - r; None: 0) by ``mlp`` over ``features``
    (default: sinusoidal features of ``dim`` of ``interval * scale``); a network built without one (``mlp`` None)
    refuses an interval."""
    if mlp is None:
        raise ValueError("this network takes no interval input: build it with interval_embedding (MeanFlow)")
    b = c_noise.shape[0]
    interval = torch.zeros_like(c_noise) if interval is None else interval.to(c_noise).expand(b)
    return mlp(features(interval) if features else sinusoidal_embedding(interval * scale, dim))


class SpatialModulation(nn.Module):
    """SPADE (Park et al. 2019) after a normalisation: h (1 + gamma(c)) + beta(c), with the spatial condition c resized
    (nearest) to h; zero-initialised, so it starts as the identity."""

    def __init__(self, cond_channels: int, channels: int, parts: Parts | None = None):
        super().__init__()
        parts = tuple(parts or ((channels, True),))
        self.conv = SlimConv2d(cond_channels, 2 * channels, 3, padding=1, slim_in=False, out_parts=parts * 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.conv(F.interpolate(cond, size=h.shape[-2:], mode="nearest")).chunk(2, dim=1)
        return h * (1 + gamma) + beta


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the embedding added in between and a 1x1 skip when widths differ.
    With ``spade_channels`` > 0 the first norm is modulated by a spatial condition (``forward(..., spatial=c)``).
    ``cin`` is a channel count or the counts of the concatenated sources (a decoder block's [h, skip])."""

    def __init__(
        self,
        cin: int | Sequence[int],
        cout: int,
        emb_dim: int,
        dropout: float = 0.0,
        groups: int = 32,
        spade_channels: int = 0,
    ):
        super().__init__()
        parts = tuple((c, True) for c in ([cin] if isinstance(cin, int) else cin))
        cin = sum(c for c, _ in parts)
        self.norm1, self.conv1 = slim_norm(cin, groups, parts), SlimConv2d(cin, cout, 3, padding=1, in_parts=parts)
        self.spade = SpatialModulation(spade_channels, cin, parts) if spade_channels else None
        self.emb = SlimLinear(emb_dim, cout)
        self.norm2, self.drop = slim_norm(cout, groups), nn.Dropout(dropout)
        self.conv2 = SlimConv2d(cout, cout, 3, padding=1)
        self.skip = SlimConv2d(cin, cout, 1, in_parts=parts) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor, spatial: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        if self.spade is not None and spatial is not None:
            h = self.spade(h, spatial)
        h = self.conv1(F.silu(h))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels through ``scaled_dot_product_attention``, residual."""

    def __init__(self, channels: int, num_heads: int = 1, groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.norm, self.heads = slim_norm(channels, groups), num_heads
        self.qkv = SlimLinear(channels, 3 * channels, out_parts=((channels, True),) * 3)
        self.out = SlimLinear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c % self.heads:
            raise ValueError(f"attention: {c} channels (at this width) do not split into {self.heads} heads")
        y = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(y).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(y).transpose(1, 2).reshape(b, c, h, w)


class Stage(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each optionally followed by attention."""

    def __init__(self, widths: Sequence[tuple], emb_dim: int, attn: bool, heads: int, dropout, groups, spade=0):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(i, o, emb_dim, dropout, groups, spade) for i, o in widths)
        self.attn = nn.ModuleList(SelfAttention(o, heads, groups) if attn else nn.Identity() for _, o in widths)


class UNet(nn.Module):
    """DDPM UNet.

    Args:
        in_channels / out_channels: image channels in and out (out defaults to in).
        image_size: input resolution, used to place attention at ``attention_resolutions``.
        base_channels, channel_mult: width of stage i is base_channels * channel_mult[i]; one 2x down/up per stage.
        num_res_blocks: residual blocks per encoder stage (the decoder has one more, as in DDPM).
        attention_resolutions: resolutions (in pixels) whose blocks get self-attention; the middle block always does.
        num_classes: if set, adds a learned class embedding; label ``num_classes`` (or ``None``) means unconditional.
        headless: no input/output convolutions (``in_channels`` / ``out_channels`` unused): the shared body of a
            :class:`~pyramid_dm.nets.PyramidUNet`, which puts its own heads per level around :meth:`body`.
        spade_channels: > 0 gives every residual block a SPADE modulation from a spatial condition of that many
            channels (see :meth:`body`).
        width_multipliers: the widths the network is trained and run at (a slimmable supernet, DDSM), each in
            (0, 1]; None: a plain network (its layers still slice, but ``forward(width=)`` refuses other widths).
        time_channels: size of the sinusoidal time embedding (default ``base_channels``): never slimmed, so a plain
            network equal to a sub-width of a supernet keeps the supernet's.
        interval_embedding: a second time input, ``interval=`` (MeanFlow's t - r), embedded like the time and added
            to it; its last layer starts at zero, so the network starts as the one without it.
    """

    checkpoint_units = (ResBlock, SelfAttention)  # what activation checkpointing wraps (nets/checkpointing.py)

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        image_size: int = 32,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 1,
        dropout: float = 0.0,
        num_classes: int | None = None,
        norm_groups: int = 32,
        time_scale: float = 1000.0,
        headless: bool = False,
        spade_channels: int = 0,
        width_multipliers: Sequence[float] | None = None,
        time_channels: int | None = None,
        interval_embedding: bool = False,
    ):
        super().__init__()
        self.width_multipliers = None if width_multipliers is None else check_widths(width_multipliers, "widths")
        n_down = len(channel_mult) - 1
        if image_size % (2**n_down):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{n_down} for {len(channel_mult)} stages")
        widths = [base_channels * m for m in channel_mult]
        emb_dim, self.base_channels, self.time_scale = 4 * base_channels, base_channels, time_scale
        self.num_classes, self.time_channels = num_classes, time_channels or base_channels
        self.time_mlp = nn.Sequential(
            SlimLinear(self.time_channels, emb_dim, slim_in=False), nn.SiLU(), SlimLinear(emb_dim, emb_dim)
        )
        self.interval_mlp = None
        if interval_embedding:
            self.interval_mlp = nn.Sequential(
                SlimLinear(self.time_channels, emb_dim, slim_in=False), nn.SiLU(), SlimLinear(emb_dim, emb_dim)
            )
            nn.init.zeros_(self.interval_mlp[2].weight)
            nn.init.zeros_(self.interval_mlp[2].bias)
        self.class_emb = SlimEmbedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem_channels = widths[0]  # the first stage's channels (a "width" is a multiplier elsewhere)
        self.conv_in = None if headless else SlimConv2d(in_channels, widths[0], 3, padding=1, slim_in=False)
        args = dict(emb_dim=emb_dim, heads=num_heads, dropout=dropout, groups=norm_groups, spade=spade_channels)

        self.down, self.downsample, skips, ch = nn.ModuleList(), nn.ModuleList(), [widths[0]], widths[0]
        for i, w in enumerate(widths):
            blocks = [(ch if j == 0 else w, w) for j in range(num_res_blocks)]
            self.down.append(Stage(blocks, attn=(image_size >> i) in attention_resolutions, **args))
            ch = w
            skips += [w] * num_res_blocks
            if i < n_down:
                self.downsample.append(SlimConv2d(w, w, 3, stride=2, padding=1))
                skips.append(w)
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout, norm_groups, spade_channels)
        self.mid_attn = SelfAttention(ch, num_heads, norm_groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout, norm_groups, spade_channels)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(((ch, skips.pop()), w))  # concatenated [h, skip]: sliced per source
                ch = w
            self.up.append(Stage(blocks, attn=(image_size >> i) in attention_resolutions, **args))
            if i > 0:
                self.upsample.append(SlimConv2d(w, w, 3, padding=1))
        self.norm_out = slim_norm(ch, norm_groups)
        out = out_channels or in_channels
        self.conv_out = None if headless else SlimConv2d(ch, out, 3, padding=1, slim_out=False)

    def at_width(self, width: float | None):
        """:func:`.slimmable.at_width` for this network's widths."""
        return at_width(self.width_multipliers, width)

    def embed(self, c_noise: Tensor, class_labels: Tensor | None, interval: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(sinusoidal_embedding(c_noise * self.time_scale, self.time_channels))
        if interval is not None or self.interval_mlp is not None:
            emb = emb + embed_interval(self.interval_mlp, interval, c_noise, self.time_scale, self.time_channels)
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((emb.shape[0],), self.num_classes, device=emb.device, dtype=torch.long)
            emb = emb + self.class_emb(class_labels)
        return emb

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        class_labels: Tensor | None = None,
        *,
        interval: Tensor | None = None,
        width: float | None = None,
    ) -> Tensor:
        with self.at_width(width):
            emb = self.embed(c_noise.expand(x.shape[0]), class_labels, interval).to(x.dtype)
            return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x), emb))))

    def body(self, h: Tensor, emb: Tensor, spatial: Tensor | None = None) -> Tensor:
        """Everything between the input and output convolutions: ``h`` has ``width`` channels; ``spatial`` is the
        SPADE condition (with ``spade_channels``). Returns the features before ``norm_out``."""
        hs = [h]
        for i, stage in enumerate(self.down):
            for res, attn in zip(stage.res, stage.attn):
                h = attn(res(h, emb, spatial))
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb, spatial)), emb, spatial)
        for i, stage in enumerate(self.up):
            for res, attn in zip(stage.res, stage.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb, spatial))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h
