"""The level geometry of the diffusion engine: how many levels, where each is diffused, what context it sees.

One level (pixel, latent) has no context; a pyramid's level l sees the finished coarser levels. The math of the
context (upsampling, augmentation, Frido's lerp, snapping) is in :mod:`pyramid_dm.diffusion.pyramid`; this mixin only
applies it with the model's settings (``layout``, ``conditioning_augmentation``, ``level_weights``, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import augment_context, context_of, mix_context, snap_to, upsample_to
from ..errors import UserError


class LevelsMixin:
    """Mixed into :class:`~pyramid_dm.models.DiffusionModel`; needs ``level_shapes``, ``schedules`` and ``hparams``."""

    @property
    def num_levels(self) -> int:
        return len(self.level_shapes)

    @property
    def layout(self) -> str:
        return self.hparams.get("layout") or "native"

    def grid_size(self, level: int) -> int:
        """The resolution level ``level`` is diffused at: its own (native) or the finest (Frido layout)."""
        return self.level_shapes[-1 if self.layout == "frido" else level][-1]

    def grid_shape(self, level: int) -> tuple[int, int, int]:
        s = self.grid_size(level)
        return (self.level_shapes[level][0], s, s)

    def context_channels(self, level: int) -> int:
        return sum(c for c, _, _ in self.level_shapes[:level])

    def level_conditioning(
        self, level: int, finished: list[Tensor], aug_t: Tensor | None = None, noise: Tensor | None = None
    ) -> dict:
        """Network keyword arguments of ``level`` given the ``finished`` coarser levels: the context, augmented
        (native layout: VP noise at ``aug_t``, given to the network; Frido layout: the fixed lerp, in training only,
        signalled by ``aug_t`` not None). Nothing for a single level."""
        if self.num_levels == 1:
            return {}
        cond: dict = {"level": level}
        ctx = context_of(finished, self.grid_size(level))
        if ctx is None:
            return cond
        if aug_t is not None and noise is not None:
            if self.layout == "frido":
                ctx = mix_context(ctx, self.hparams.get("frido_noise_mix", 0.1), noise)
            else:
                ctx = augment_context(ctx, self.schedules[level], aug_t, noise)
                cond["aug_level"] = torch.as_tensor(aug_t, dtype=torch.float32, device=ctx.device)
        cond["context"] = ctx
        return cond

    def to_grid(self, z: Tensor, level: int) -> Tensor:
        return upsample_to(z, self.grid_size(level))

    def from_grid(self, z: Tensor, level: int) -> Tensor:
        return snap_to(z, self.level_shapes[level][-1])

    def level_weights(self) -> Tensor:
        w = self.hparams.get("level_weights") or [1.0] * self.num_levels
        w = torch.tensor(w, dtype=torch.float32)
        return w / w.sum()

    def per_level(self, name: str, value, default) -> list:
        """``value`` (one for all levels, or a list with one per level) as a per-level list."""
        if value is None:
            value = default
        if isinstance(value, list | tuple):
            if len(value) != self.num_levels:
                raise UserError(
                    f"{name} {list(value)} gives {len(value)} values but the model has {self.num_levels} "
                    f"level{'s' if self.num_levels > 1 else ''} (one value, or one per level coarse first)"
                )
            return list(value)
        return [value] * self.num_levels

    def trained_levels_per_step(self) -> list[tuple[int, float]]:
        """(level, expected passes per step): every level once, or one sampled level (``level_training: sample``)."""
        if self.hparams.get("level_training", "all") == "sample":
            return list(enumerate(self.level_weights().tolist()))
        return [(level, 1.0) for level in range(self.num_levels)]

    def training_augmentation(self, n: int, generator: torch.Generator | None = None, device=None):
        """(per-sample augmentation level, noise per level) for the contexts of a training batch, or None."""
        if self.num_levels == 1:
            return None
        device = device or self.device
        if self.layout == "frido":
            t = torch.zeros(n)
        else:
            top = self.hparams.get("conditioning_augmentation") or 0.0
            if not top:
                return None
            t = torch.rand(n, generator=generator) * top
        noise = [
            torch.randn(
                (n, self.context_channels(level), self.grid_size(level), self.grid_size(level)), generator=generator
            ).to(device)
            for level in range(self.num_levels)
        ]
        return t.to(device), noise
