"""Hourglass diffusion transformer, in the style of HDiT (Crowson et al., "Scalable High-Resolution Pixel-Space
Image Synthesis with Hourglass Diffusion Transformers", ICML 2024; reference code k-diffusion
``models/image_transformer_v2.py``).

Patch tokens run through a hierarchy of stages, each half the previous one's side: going down, 2x2 tokens merge into
one (a linear map to the next stage's width); going up, one token splits into 2x2 and is mixed with the skip from the
same stage by a learned interpolation (``lerp(skip, up, f)``, f starting at 0.5). Every stage but the lowest uses
local attention in shifted windows (Swin's cyclic shift with its mask, written with ``scaled_dot_product_attention``
over windows, so no compiled extension is needed); the lowest uses global attention. Attention takes axial rotary
positions (half of each head's dimensions, split between rows and columns); feed-forward layers are GEGLU; every
norm is an RMSNorm whose scale is set by the conditioning (AdaRMSNorm), which a mapping network makes from the noise
embedding (Fourier features), the class, and for pyramids the level and the context's augmentation noise. The
attention and feed-forward outputs and the final projection start at zero: the network outputs zero at
initialisation. The cost of the local stages grows linearly with the pixels; the global stage's with its tokens
squared, so add a stage when the image doubles to keep its grid (and the whole cost per pixel) fixed.

Pyramids: as :class:`~pyramid_dm.nets.dit.DiT`, one body, a patch embedding and output per level with the context
as extra input channels; a level's size must reach the lowest stage with whole windows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .levels import PerLevel
from .slimmable import SlimLinear, at_width, check_heads, check_widths, current_width, heads_at
from .unet import embed_interval


class RMSNorm(nn.Module):
    def __init__(self, dim: int, cond_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Linear(cond_dim, dim, bias=False) if cond_dim else None  # AdaRMSNorm: 1 + W c
        self.weight = None if cond_dim else nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.scale is None:
            return x * self.weight
        return x * (1 + self.scale(cond))[:, None, None, :]


def axial_rope(x: Tensor, rows: Tensor, cols: Tensor, freqs: Tensor) -> Tensor:
    """Rotate the first half of the last dimension of ``x`` (..., tokens, d): its first quarter by the token's row
    position, its second by its column, pairs (x_i, x_{i + n}) at angles pos * freqs[i] (``rows``/``cols``:
    (..., tokens), broadcast against ``x``)."""
    n = freqs.shape[0]
    out = []
    for part, pos in ((x[..., : 2 * n], rows), (x[..., 2 * n : 4 * n], cols)):
        angle = pos[..., None] * freqs  # (..., tokens, n)
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        a, b = part[..., :n], part[..., n:]
        out += [a * cos - b * sin, a * sin + b * cos]
    return torch.cat([*out, x[..., 4 * n :]], dim=-1)


def grid_positions(h: int, w: int, device) -> tuple[Tensor, Tensor]:
    """Row and column positions of an h x w grid in [-1, 1] (HDiT's ``make_axial_pos``), row-major."""
    r = torch.linspace(-1, 1, h + 1, device=device)[:-1] + 1 / h
    c = torch.linspace(-1, 1, w + 1, device=device)[:-1] + 1 / w
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    return rr.reshape(-1), cc.reshape(-1)


@functools.lru_cache(maxsize=64)
def shifted_window_mask(h: int, w: int, ws: int, s: int, device) -> Tensor:
    """Swin's mask for a cyclic shift of ``s`` with windows of ``ws``: a token attends only to tokens that were its
    neighbours before the roll. (1, windows, 1, ws*ws, ws*ws), True: attend; built once per grid and device."""
    region = torch.zeros(h, w, device=device, dtype=torch.long)
    for i, rs in enumerate((slice(0, h - ws), slice(h - ws, h - s), slice(h - s, h))):
        for j, cs in enumerate((slice(0, w - ws), slice(w - ws, w - s), slice(w - s, w))):
            region[rs, cs] = 3 * i + j
    r = region.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    return (r[:, :, None] == r[:, None, :])[None, :, None]


def geglu(x: Tensor) -> Tensor:
    """GEGLU (Shazeer 2020): the first half of the features gated by the GELU of the second."""
    a, gate = x.chunk(2, dim=-1)
    return a * F.gelu(gate)


class Attention(nn.Module):
    """Self-attention over a (B, H, W, D) grid with axial RoPE: global, or in (shifted) windows of ``window``."""

    def __init__(self, dim: int, head_dim: int, cond_dim: int, window: int | None, shift: bool):
        super().__init__()
        if dim % head_dim or head_dim % 8:
            raise ValueError(f"hdit: width {dim} does not split into heads of {head_dim} (a multiple of 8)")
        self.heads, self.head_dim, self.window, self.shift = dim // head_dim, head_dim, window, shift
        self.norm = RMSNorm(dim, cond_dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.out.weight)
        n = head_dim // 8
        self.register_buffer("freqs", torch.linspace(math.log(math.pi), math.log(10 * math.pi), n).exp(), False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        heads = heads_at(self.heads, current_width())  # slimmable: a prefix of the heads of q, k and v
        d = heads * self.head_dim
        weight, out = self.qkv.weight, self.out.weight  # whole at full width: a slice's backward copies the gradient
        if heads != self.heads:
            weight, out = weight.view(3, -1, weight.shape[1])[:, :d].reshape(3 * d, -1), out[:, :d]
        q, k, v = F.linear(self.norm(x, cond), weight).chunk(3, dim=-1)
        rows, cols = grid_positions(h, w, x.device)
        if self.window is None:
            q, k, v = (t.reshape(b, h * w, heads, -1).transpose(1, 2) for t in (q, k, v))
            q, k = axial_rope(q, rows, cols, self.freqs), axial_rope(k, rows, cols, self.freqs)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, d)
            return x + F.linear(y, out)
        s = self.window // 2 if self.shift else 0
        pos = torch.stack([rows.view(h, w), cols.view(h, w)], dim=-1)
        if s:
            q, k, v = (t.roll((-s, -s), dims=(1, 2)) for t in (q, k, v))
            pos = pos.roll((-s, -s), dims=(0, 1))
        ws = self.window
        q, k, v = (self._windows(t) for t in (q, k, v))  # (B, nW, heads, ws*ws, hd)
        pw = pos.view(h // ws, ws, w // ws, ws, 2).permute(0, 2, 1, 3, 4).reshape(-1, ws * ws, 2)
        pr, pc = pw[:, None, :, 0], pw[:, None, :, 1]  # (nW, 1, ws*ws): broadcast over the batch and the heads
        q, k = axial_rope(q, pr, pc, self.freqs), axial_rope(k, pr, pc, self.freqs)
        mask = shifted_window_mask(h, w, self.window, s, x.device) if s else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nW, heads, ws*ws, hd)
        y = y.transpose(2, 3).reshape(b, h // ws, w // ws, ws, ws, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, d)
        if s:
            y = y.roll((s, s), dims=(1, 2))
        return x + F.linear(y, out)

    def _windows(self, t: Tensor) -> Tensor:
        b, h, w, d = t.shape
        ws, heads = self.window, d // self.head_dim
        t = t.view(b, h // ws, ws, w // ws, ws, heads, self.head_dim).permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(b, (h // ws) * (w // ws), heads, ws * ws, self.head_dim)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, cond_dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, cond_dim)
        # slimmable: a prefix of the hidden units, of the value and of the gate half alike
        self.up = SlimLinear(dim, 2 * hidden, bias=False, out_parts=((hidden, True), (hidden, True)), slim_in=False)
        self.down = SlimLinear(hidden, dim, bias=False, slim_out=False)
        nn.init.zeros_(self.down.weight)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x + self.down(geglu(self.up(self.norm(x, cond))))


class Layer(nn.Module):
    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, cond_dim: int, window: int | None, shift: bool):
        super().__init__()
        self.attn = Attention(dim, head_dim, cond_dim, window, shift)
        self.ff = FeedForward(dim, round(dim * mlp_ratio), cond_dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.ff(self.attn(x, cond), cond)


def fourier_features(x: Tensor, weight: Tensor) -> Tensor:
    f = 2 * math.pi * x[:, None] * weight[None]
    return torch.cat([f.cos(), f.sin()], dim=-1)


class HourglassDiT(PerLevel):
    """Args:
    level_channels / level_sizes / context_channels / num_classes: as :class:`~pyramid_dm.nets.dit.DiT`.
    patch_size: one for all levels or one per level.
    widths, depths: per stage, highest resolution first (e.g. [128, 256], [2, 2]); every stage but the last runs
        local attention in windows of ``window`` tokens per side (shifted every other layer), the last global.
    head_dim, mlp_ratio: attention heads of ``head_dim`` (a multiple of 8); GEGLU hidden units ``width * mlp_ratio``.
    width_multipliers: a slimmable supernet (step-aware models): at width w every layer runs the first
        round(heads w) heads and the first slim(hidden w) GEGLU units (multiples of 8), as :class:`~.dit.DiT`; the
        token streams, merges, splits and the mapping network stay whole. At width 1 it is the plain network.
    mapping_width, mapping_depth: the mapping network that turns the noise, class, level and augmentation embeddings
        into the conditioning of every AdaRMSNorm; the noise enters as random Fourier features of ``c_noise *
        time_scale`` (frequencies ~ N(0, 4^2), fixed and saved with the weights).
    interval_embedding: a second time input, ``interval=`` (MeanFlow's t - r), through the same Fourier features and
        its own zero-initialised projection, so the network starts as the one without it.
    """

    checkpoint_units = (Layer,)  # what activation checkpointing wraps (nets/checkpointing.py)

    def __init__(
        self,
        level_channels: Sequence[int],
        level_sizes: Sequence[int],
        context_channels: Sequence[int] | None = None,
        num_classes: int | None = None,
        patch_size: int | Sequence[int] = 4,
        widths: Sequence[int] = (128, 256),
        depths: Sequence[int] = (2, 2),
        window: int = 4,
        head_dim: int = 64,
        mlp_ratio: float = 3.0,
        mapping_width: int = 256,
        mapping_depth: int = 2,
        time_scale: float = 1.0,
        width_multipliers: Sequence[float] | None = None,
        interval_embedding: bool = False,
    ):
        super().__init__()
        self.setup_levels("hdit", level_channels, level_sizes, context_channels, patch_size, num_classes, mapping_width)
        context, patches = self.context_channels, self.patches
        if len(widths) != len(depths):
            raise ValueError(f"hdit: one depth per width, got widths {list(widths)} and depths {list(depths)}")
        stages = len(widths)
        for lv, (size, p) in enumerate(zip(level_sizes, patches)):
            grid = size // p
            if grid % (2 ** (stages - 1)) or (stages > 1 and window > grid):
                raise ValueError(
                    f"hdit: level {lv}'s {grid}x{grid} tokens do not halve {stages - 1} times into whole stages, or "
                    f"are fewer than the window {window} (patch_size {p}, {stages} widths)"
                )
            for i in range(stages - 1):
                if (grid >> i) % window:
                    raise ValueError(
                        f"hdit: the window {window} does not tile stage {i}'s {grid >> i}x{grid >> i} tokens of "
                        f"level {lv}"
                    )
        self.width_multipliers = None
        if width_multipliers:
            self.width_multipliers = check_widths(width_multipliers, "hdit: width_multipliers")
        check_heads("hdit", self.width_multipliers, [w // head_dim for w in widths])
        self.time_scale = time_scale
        c = mapping_width
        self.register_buffer("fourier", torch.randn(c // 2) * 4, persistent=True)  # the noise's Fourier features
        self.aug_in = nn.Linear(c, c, bias=False) if any(context) else None
        self.time_in = nn.Linear(c, c, bias=False)
        self.interval_in = nn.Linear(c, c, bias=False) if interval_embedding else None
        if self.interval_in is not None:
            nn.init.zeros_(self.interval_in.weight)
        mapping = []
        for _ in range(mapping_depth):
            mapping += [RMSNorm(c), nn.Linear(c, 2 * c, bias=False), _GEGLU(), nn.Linear(c, c, bias=False)]
        self.mapping = nn.ModuleList(mapping)
        self.mapping_norm = RMSNorm(c)
        self.embed = nn.ModuleList(
            nn.Linear((ch + k) * p * p, widths[0]) for ch, k, p in zip(level_channels, context, patches)
        )
        local = [window] * (stages - 1) + [None]
        self.down = nn.ModuleList(
            nn.ModuleList(Layer(widths[i], head_dim, mlp_ratio, c, local[i], j % 2 == 1) for j in range(depths[i]))
            for i in range(stages - 1)
        )
        self.merge = nn.ModuleList(nn.Linear(4 * widths[i], widths[i + 1], bias=False) for i in range(stages - 1))
        self.mid = nn.ModuleList(Layer(widths[-1], head_dim, mlp_ratio, c, None, False) for _ in range(depths[-1]))
        self.split = nn.ModuleList(nn.Linear(widths[i + 1], 4 * widths[i], bias=False) for i in range(stages - 1))
        self.mix = nn.Parameter(torch.full((stages - 1,), 0.5)) if stages > 1 else None
        self.up = nn.ModuleList(
            nn.ModuleList(Layer(widths[i], head_dim, mlp_ratio, c, local[i], j % 2 == 1) for j in range(depths[i]))
            for i in range(stages - 1)
        )
        self.out_norm = RMSNorm(widths[0])
        self.out = nn.ModuleList(nn.Linear(widths[0], ch * p * p) for ch, p in zip(level_channels, patches))
        for layer in self.out:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(
        self, c_noise: Tensor, class_labels: Tensor | None, level: int, aug_t: Tensor | None, interval=None
    ) -> Tensor:
        b = c_noise.shape[0]
        dtype = self.time_in.weight.dtype
        cond = self.time_in(fourier_features(c_noise.to(dtype) * self.time_scale, self.fourier))
        if interval is not None or self.interval_in is not None:
            features = lambda h: fourier_features(h.to(dtype) * self.time_scale, self.fourier)  # noqa: E731
            cond = cond + embed_interval(self.interval_in, interval, c_noise.to(dtype), 1.0, 0, features)
        cond = self.add_label_and_level(cond, class_labels, level)
        if self.context_channels[level]:
            aug = torch.zeros(b, device=cond.device, dtype=dtype) if aug_t is None else aug_t.to(cond.device, dtype)
            cond = cond + self.aug_in(fourier_features(aug.expand(b), self.fourier))
        for i in range(0, len(self.mapping), 4):
            norm, up, act, down = self.mapping[i : i + 4]
            cond = cond + down(act(up(norm(cond))))
        return self.mapping_norm(cond)

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
        """Level ``level``'s output for its noisy latent ``x`` (B, C, H, W), given ``context`` noised at ``aug_t``,
        at ``width`` (None: the caller's context)."""
        with at_width(self.width_multipliers, width):
            return self._forward(x, c_noise, class_labels, level, context, aug_t, interval)

    def _forward(self, x, c_noise, class_labels, level, context, aug_t, interval=None) -> Tensor:
        b, p = x.shape[0], self.patches[level]
        x = self.level_input(x, level, context)
        cond = self.condition(c_noise.expand(b), class_labels, level, aug_t, interval).to(x.dtype)
        tokens = self.embed[level](F.pixel_unshuffle(x, p).permute(0, 2, 3, 1))  # (B, H/p, W/p, D)
        skips = []
        for i, layers in enumerate(self.down):
            for layer in layers:
                tokens = layer(tokens, cond)
            skips.append(tokens)
            tokens = self.merge[i](_merge(tokens))
        for layer in self.mid:
            tokens = layer(tokens, cond)
        for i in reversed(range(len(self.up))):
            tokens = torch.lerp(skips[i], _split(self.split[i](tokens)), self.mix[i].to(tokens.dtype))
            for layer in self.up[i]:
                tokens = layer(tokens, cond)
        out = self.out[level](self.out_norm(tokens)).permute(0, 3, 1, 2)
        return F.pixel_shuffle(out, p)


class _GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return geglu(x)


def _merge(t: Tensor) -> Tensor:
    """(B, H, W, D) -> (B, H/2, W/2, 4D): each 2x2 block of tokens into one."""
    b, h, w, d = t.shape
    return t.view(b, h // 2, 2, w // 2, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * d)


def _split(t: Tensor) -> Tensor:
    """(B, H, W, 4D) -> (B, 2H, 2W, D): the inverse of :func:`_merge`."""
    b, h, w, d4 = t.shape
    d = d4 // 4
    return t.view(b, h, w, 2, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, d)
