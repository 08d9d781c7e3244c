"""Pyramid layouts: how the levels of a :class:`~.levels.LevelGeometry` are laid out for diffusion, as strategies.

A layout decides (1) the grid each level is diffused on, (2) how a training step draws the levels' times, and (3) how
a level's context is perturbed in training and at sampling time. The formulas are in :mod:`.pyramid`; a new layout
is one new class registered in :data:`LAYOUTS`.

- :class:`NativeLayout` (ours): every level at its own resolution, each its own t; conditioning augmentation (Ho et
  al. 2022) noises the context variance-preservingly at a time ``aug_t`` given to the network.
- :class:`FridoLayout` (Fan et al. 2023): every level at the finest resolution, one t shared by all levels; the context
  is lerped with noise at the fixed ``noise_mix`` in training only, not told to the network.
A single level (pixel, latent diffusion) has no context: every layout gives it no conditioning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .levels import LevelGeometry
from .pyramid import augment_context, mix_context
from .schedules import NoiseSchedule


class Layout:
    name = "layout"

    @classmethod
    def from_options(cls, options) -> Layout:
        """The layout from a model's options (``conditioning_augmentation``, ``frido_noise_mix``, ...)."""
        raise NotImplementedError

    def grid_sizes(self, level_shapes) -> list[int]:
        raise NotImplementedError

    def geometry(self, level_shapes) -> LevelGeometry:
        return LevelGeometry.of(level_shapes, self.grid_sizes(level_shapes))

    def training_u(self, n: int, num_levels: int, device=None) -> Tensor:
        """u ~ U[0, 1) for a training batch: (n,) shared by all levels, or (n, num_levels)."""
        raise NotImplementedError

    def training_aug_t(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        """The per-sample augmentation times of a training batch's contexts (None: clean contexts)."""
        return None

    def perturb(self, context: Tensor, schedule: NoiseSchedule, aug_t: Tensor, noise: Tensor) -> dict:
        """Network keyword arguments for a ``context`` perturbed at ``aug_t`` with ``noise``."""
        raise NotImplementedError

    def sampling_aug_t(self, level: int) -> float:
        """The augmentation time of ``level``'s context when sampling (0: clean, no noise drawn)."""
        return 0.0

    # ---- shared by every layout ------------------------------------------------------------------------------------
    def conditioning(
        self,
        geometry: LevelGeometry,
        level: int,
        finished: list[Tensor],
        schedule: NoiseSchedule,
        aug_t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict:
        """Network keyword arguments of ``level`` given the ``finished`` coarser levels (nothing for one level)."""
        if geometry.num_levels == 1:
            return {}
        cond: dict = {"level": level}
        ctx = geometry.context(finished, level)
        if ctx is None:
            return cond
        if aug_t is not None and noise is not None:
            return {**cond, **self.perturb(ctx, schedule, aug_t, noise)}
        return {**cond, "context": ctx}

    def training_augmentation(
        self, geometry: LevelGeometry, n: int, generator: torch.Generator | None = None, device=None
    ) -> tuple[Tensor, list[Tensor]] | None:
        """(per-sample augmentation time, noise per level) for the contexts of a training batch, or None."""
        if geometry.num_levels == 1:
            return None
        t = self.training_aug_t(n, generator)
        if t is None:
            return None
        noise = [
            torch.randn((n, geometry.context_channels(level), *geometry.grid_shape(level)[1:]), generator=generator)
            for level in range(geometry.num_levels)
        ]
        return t.to(device), [z.to(device) for z in noise]

    def sampling_augmentation(
        self, geometry: LevelGeometry, level: int, n: int, generator: torch.Generator | None, device
    ) -> tuple[Tensor | None, Tensor | None]:
        """(augmentation time, noise) of ``level``'s context at sampling time, or (None, None) for a clean one."""
        aug = self.sampling_aug_t(level)
        if not level or not aug:
            return None, None
        shape = (n, geometry.context_channels(level), *geometry.grid_shape(level)[1:])
        noise = torch.randn(shape, generator=generator, device=device)
        return torch.full((n,), float(aug)), noise


class NativeLayout(Layout):
    """Each level at its own resolution and time; ``conditioning_augmentation``: training noises the context at
    aug_t ~ U[0, this]; ``sample_augmentation``: the aug_t used when sampling."""

    name = "native"

    def __init__(self, conditioning_augmentation: float = 0.0, sample_augmentation: float = 0.0):
        for key, value in [
            ("conditioning_augmentation", conditioning_augmentation),
            ("sample_augmentation", sample_augmentation),
        ]:
            if not 0 <= value < 1:
                raise ValueError(f"{key} must lie in [0, 1), got {value}")
        self.conditioning_augmentation, self.sample_augmentation = conditioning_augmentation, sample_augmentation

    @classmethod
    def from_options(cls, options) -> NativeLayout:
        return cls(options.conditioning_augmentation, options.sample_augmentation)

    def grid_sizes(self, level_shapes) -> list[int]:
        return [s[-1] for s in level_shapes]

    def training_u(self, n: int, num_levels: int, device=None) -> Tensor:
        return torch.rand(n, num_levels, device=device)

    def training_aug_t(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        if not self.conditioning_augmentation:
            return None
        return torch.rand(n, generator=generator) * self.conditioning_augmentation

    def perturb(self, context: Tensor, schedule: NoiseSchedule, aug_t: Tensor, noise: Tensor) -> dict:
        return {
            "context": augment_context(context, schedule, aug_t, noise),
            "aug_t": torch.as_tensor(aug_t, dtype=torch.float32, device=context.device),
        }

    def sampling_aug_t(self, level: int) -> float:
        return self.sample_augmentation


class FridoLayout(Layout):
    """Frido's own layout: every level on the finest grid, one shared t, the context lerped with ``noise_mix`` noise
    in training (at sampling time the context is clean)."""

    name = "frido"

    def __init__(self, noise_mix: float = 0.1):
        if not 0 <= noise_mix < 1:
            raise ValueError(f"frido_noise_mix must lie in [0, 1), got {noise_mix}")
        self.noise_mix = noise_mix

    @classmethod
    def from_options(cls, options) -> FridoLayout:
        return cls(options.frido_noise_mix)

    def grid_sizes(self, level_shapes) -> list[int]:
        return [level_shapes[-1][-1]] * len(level_shapes)

    def training_u(self, n: int, num_levels: int, device=None) -> Tensor:
        return torch.rand(n, device=device)

    def training_aug_t(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        return torch.zeros(n)  # not a time: only says "perturb", the lerp is fixed

    def perturb(self, context: Tensor, schedule: NoiseSchedule, aug_t: Tensor, noise: Tensor) -> dict:
        return {"context": mix_context(context, self.noise_mix, noise)}


LAYOUTS: dict[str, type[Layout]] = {"native": NativeLayout, "frido": FridoLayout}
