"""Autoencoders for the first stage: one network for the single-scale (LDM) and the multi-scale (Frido MS-VQGAN) case.

The encoder is a convolutional trunk with one 2x downsampling per ``channel_mult`` entry after the first; its last
``levels`` resolutions are tapped, coarse first. Encoding is top-down (Frido ``MSFPNVQModel.encode``, FPN style): the
coarsest tap is regularised first (quantised, or a KL posterior); each finer tap is merged with the upsampled,
already-regularised coarser codes and regularised with its own codebook. The decoder upsamples every level's code to
the finest tapped grid, concatenates them on channels and reconstructs; finer levels may be left out (``decode(z[:k])``
zero-fills them), which training exercises with ``coarse_decode_prob`` so that the coarse levels alone decode too.
``levels=1`` is the LDM autoencoder (KL-f4/f8, VQ-f4/f8).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantizer import DiagonalGaussian, VectorQuantizer
from .unet import group_norm


class ConvResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a residual (VQGAN ``ResnetBlock`` without a time embedding)."""

    def __init__(self, cin: int, cout: int, groups: int = 32):
        super().__init__()
        self.block = nn.Sequential(
            group_norm(cin, groups),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
            group_norm(cout, groups),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


def _blocks(cin: int, cout: int, n: int, groups: int) -> nn.Sequential:
    return nn.Sequential(*(ConvResBlock(cin if i == 0 else cout, cout, groups) for i in range(n)))


class MultiScaleAutoencoder(nn.Module):
    """Args:
    in_channels, image_size: the images.
    base_channels, channel_mult, num_res_blocks: the trunk; resolution i is image_size / 2^i.
    levels: how many of the coarsest resolutions are latent levels (1 = a plain autoencoder).
    latent_channels: channels of each level's latent (an int for all, or one per level, coarse first).
    regularizer: ``vq`` (one codebook per level) or ``kl``.
    codebook_size, beta, ema_codebook, dead_code_after: the quantisers (see :class:`VectorQuantizer`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        levels: int = 1,
        latent_channels: int | Sequence[int] = 4,
        regularizer: str = "kl",
        codebook_size: int = 512,
        beta: float = 0.25,
        ema_codebook: bool = True,
        dead_code_after: int = 100,
        norm_groups: int = 32,
    ):
        super().__init__()
        if regularizer not in ("kl", "vq"):
            raise ValueError(f"regularizer {regularizer!r} is not one of ['kl', 'vq']")
        depth = len(channel_mult)
        if not 1 <= levels <= depth:
            raise ValueError(f"levels {levels} must lie in [1, {depth}] (one per channel_mult entry at most)")
        if image_size % 2 ** (depth - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{depth - 1} for {depth} resolutions")
        lat = [latent_channels] * levels if isinstance(latent_channels, int) else list(latent_channels)
        if len(lat) != levels:
            raise ValueError(f"latent_channels {latent_channels} needs one entry per level ({levels})")
        self.levels, self.regularizer, self.latent_channels = levels, regularizer, lat
        self.level_sizes = [image_size >> i for i in range(depth - 1, depth - 1 - levels, -1)]  # coarse first
        widths = [base_channels * m for m in channel_mult]
        taps = widths[depth - levels :][::-1]  # trunk widths at the tapped resolutions, coarse first

        # encoder trunk: finest to coarsest
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            self.enc.append(_blocks(ch, w, num_res_blocks, norm_groups))
            ch = w
            if i < depth - 1:
                self.down.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        moments = 2 if regularizer == "kl" else 1
        # level l: merge the tap with the upsampled coarser codes, then project to the latent (x2 for mean/logvar)
        self.merge = nn.ModuleList(
            _blocks(w + sum(lat[:i]), w, 1, norm_groups) if i else nn.Identity() for i, w in enumerate(taps)
        )
        self.to_latent = nn.ModuleList(
            nn.Sequential(group_norm(w, norm_groups), nn.SiLU(), nn.Conv2d(w, moments * c, 1))
            for w, c in zip(taps, lat)
        )
        if regularizer == "vq":
            self.quantizers = nn.ModuleList(
                VectorQuantizer(codebook_size, c, beta, ema_codebook, dead_after=dead_code_after) for c in lat
            )
        else:
            self.posterior = DiagonalGaussian()

        # decoder: from the finest tapped grid up to the image
        start = depth - levels  # trunk index of the finest tap
        self.from_latent = nn.Conv2d(sum(lat), widths[start], 3, padding=1)
        self.dec = nn.ModuleList()
        self.up = nn.ModuleList()
        ch = widths[start]
        for i in range(start, -1, -1):
            self.dec.append(_blocks(ch, widths[i], num_res_blocks + 1, norm_groups))
            ch = widths[i]
            if i > 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = group_norm(ch, norm_groups)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    # ---- encoder -------------------------------------------------------------------------------------------------
    def trunk(self, x: Tensor) -> list[Tensor]:
        """Trunk features at the tapped resolutions, coarse first."""
        h, feats = self.conv_in(x), []
        for i, blocks in enumerate(self.enc):
            h = blocks(h)
            feats.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        return feats[len(feats) - self.levels :][::-1]

    def regularize(self, level: int, z: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, dict]:
        if self.regularizer == "vq":
            return self.quantizers[level](z)
        return self.posterior(z, sample)

    def encode(self, x: Tensor, sample: bool = True) -> tuple[list[Tensor], list[Tensor], Tensor, list[dict]]:
        """(pre-regularisation latents, regularised codes, regulariser loss, statistics), each per level, coarse
        first. The pre-regularisation latent of a VQ level is the continuous encoder output (what latent diffusion
        models, re-quantised at decoding); of a KL level it is the posterior sample (mean if not ``sample``)."""
        feats, latents, codes, stats = self.trunk(x), [], [], []
        loss = x.new_zeros(())
        for level, f in enumerate(feats):
            if level:
                up = [F.interpolate(c, size=f.shape[-2:], mode="nearest") for c in codes]
                f = self.merge[level](torch.cat([f, *up], dim=1))
            z = self.to_latent[level](f)
            code, reg, s = self.regularize(level, z, sample)
            latents.append(code if self.regularizer == "kl" else z)
            codes.append(code)
            loss = loss + reg
            stats.append(s)
        return latents, codes, loss, stats

    def quantize(self, latents: Sequence[Tensor]) -> list[Tensor]:
        """Codes for latents generated by a diffusion model: VQ levels snap to their codebooks, KL levels pass."""
        if self.regularizer == "kl":
            return list(latents)
        return [q.lookup(q.indices(z)).to(z.dtype) for q, z in zip(self.quantizers, latents)]

    # ---- decoder -------------------------------------------------------------------------------------------------
    def decode(self, codes: Sequence[Tensor]) -> Tensor:
        """Image from the codes of the first ``len(codes)`` levels (the finer ones are zero)."""
        if not 1 <= len(codes) <= self.levels:
            raise ValueError(f"decode takes 1 to {self.levels} levels, got {len(codes)}")
        ref = codes[0]
        size = self.level_sizes[-1]
        parts = [F.interpolate(c, size=(size, size), mode="nearest") for c in codes]
        for c in self.latent_channels[len(codes) :]:
            parts.append(ref.new_zeros(ref.shape[0], c, size, size))
        h = self.from_latent(torch.cat(parts, dim=1))
        for i, blocks in enumerate(self.dec):
            h = blocks(h)
            if i < len(self.up):
                h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight (the adaptive GAN weight balances gradients there, VQGAN Eq. 7)."""
        return self.conv_out.weight


def autoencoder_options() -> dict:
    """The network's own options and their defaults (its constructor's, less the image's ``in_channels`` and
    ``image_size``): what ``AutoencoderModel`` exposes flat in YAML and a checkpoint stores."""
    params = inspect.signature(MultiScaleAutoencoder).parameters
    return {k: p.default for k, p in params.items() if k not in ("in_channels", "image_size")}


def build_autoencoder(h) -> MultiScaleAutoencoder:
    """The network of an autoencoder run's hyperparameters (``AutoencoderModel.hparams``, or a checkpoint's): every
    option of :func:`autoencoder_options` they hold (a checkpoint from before an option existed gets its default)."""
    options = {k: h[k] for k in autoencoder_options() if k in h}
    return MultiScaleAutoencoder(in_channels=h["channels"], image_size=h["image_size"], **options)
