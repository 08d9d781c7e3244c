"""Pyramid layouts: how the levels of a :class:`~.levels.LevelGeometry` are laid out for diffusion, as strategies.

A layout decides (1) the grid each level is diffused on, (2) how a training step draws the levels' times, and (3) how
a level's context is perturbed in training and at sampling time. The formulas are in :mod:`.pyramid`; a new layout
is one new class registered in :data:`LAYOUTS`.

- :class:`NativeLayout` (ours): every level at its own resolution, each its own t; conditioning augmentation (Ho et
  al. 2022) noises the context variance-preservingly at a time ``aug_t`` given to the network.
- :class:`FridoLayout` (Fan et al. 2023): every level at the finest resolution, one t shared by all levels; the context
  is lerped with noise at the fixed ``noise_mix`` in training only, not told to the network.
- :class:`PyramidFlowLayout` (Jin et al. 2025): no context; the levels are the stages of one flow trajectory, each
  trained between its start and end points and started, when sampling, from the previous stage's renoised end
  (:mod:`.pyramid_flow`).
A single level (pixel, latent diffusion) has no context: every layout gives it no conditioning. Besides the context,
a layout decides each level's training pair (target, noise), its starting noise when sampling and the options of its
denoiser; the defaults below are the plain ones (the level itself, fresh noise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...registry import Registry
from ..parameterization import PREDICTIONS
from ..schedules.base import NoiseSchedule
from . import flow as pf
from .context import augment_context, mix_context
from .levels import LevelGeometry


class Layout:
    name = "layout"
    options: tuple[str, ...] = ()  # the model options (besides the layout's name) this layout reads

    @classmethod
    def from_options(cls, options) -> Layout:
        """The layout from a model's options (``conditioning_augmentation``, ``frido_noise_mix``, ...)."""
        raise NotImplementedError

    def grid_sizes(self, level_shapes) -> list[int]:
        """Where each level is diffused: its own resolution unless the layout says otherwise."""
        return [s[-1] for s in level_shapes]

    def geometry(self, level_shapes) -> LevelGeometry:
        return LevelGeometry.of(level_shapes, self.grid_sizes(level_shapes))

    def training_u(self, n: int, num_levels: int, device=None) -> Tensor:
        """u ~ U[0, 1) for a training batch: (n,) shared by all levels, or (n, num_levels) (default: each its own)."""
        return torch.rand(n, num_levels, device=device)

    def training_aug_t(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        """The per-sample augmentation times of a training batch's contexts (None: clean contexts)."""
        return None

    def perturb(self, context: Tensor, schedule: NoiseSchedule, aug_t: Tensor, noise: Tensor) -> dict:
        """Network keyword arguments for a ``context`` perturbed at ``aug_t`` with ``noise``."""
        raise NotImplementedError

    def sampling_aug_t(self, level: int) -> float:
        """The augmentation time of ``level``'s context when sampling (0: clean, no noise drawn)."""
        return 0.0

    def check(self, prediction: str, schedule: NoiseSchedule) -> None:
        """A ValueError unless the layout works with this parameterization and schedule."""

    def training_pair(self, geometry: LevelGeometry, levels: list[Tensor], noise: list[Tensor], level: int):
        """(target, noise) of ``level`` in a training step: its clean latent on its grid, and its own noise."""
        return geometry.to_grid(levels[level], level), noise[level]

    def initial_noise(self, geometry: LevelGeometry, level: int, finished: list[Tensor], n: int, generator, device):
        """What ``level``'s sampler starts from (unit noise), given the ``finished`` coarser levels."""
        return torch.randn((n, *geometry.grid_shape(level)), generator=generator, device=device)

    def denoiser_options(self, level: int, num_levels: int, pixel_space: bool) -> dict:
        """Keyword arguments of ``level``'s :class:`~.parameterization.Denoiser` (clip x0_hat to [-1, 1] in pixel
        space)."""
        return {"clip_x0": pixel_space}

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
    options = ("conditioning_augmentation", "sample_augmentation")

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
    options = ("frido_noise_mix",)

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


class PyramidFlowLayout(Layout):
    """Pyramidal Flow Matching (:mod:`.pyramid_flow`): each level is a stage of one flow trajectory at its own
    resolution (each twice the previous one), no context, one network with a level (stage) embedding; ``stage_bounds``
    are the nominal windows 1 = b_0 > ... > b_S = 0 (default: equal thirds for three stages)."""

    name = "pyramid_flow"
    options = ("stage_bounds",)

    def __init__(self, stage_bounds: list[float] | None = None):
        self.stage_bounds = None if stage_bounds is None else [float(b) for b in stage_bounds]

    @classmethod
    def from_options(cls, options) -> PyramidFlowLayout:
        return cls(options.stage_bounds)

    def stage_windows(self, num_stages: int) -> list[tuple[float, float]]:
        """(end, start) of each stage on the whole trajectory, from ``stage_bounds`` (default: equal windows)."""
        bounds = pf.uniform_bounds(num_stages) if self.stage_bounds is None else self.stage_bounds
        return pf.stage_windows(pf.check_bounds(bounds, num_stages))

    def geometry(self, level_shapes) -> LevelGeometry:
        shapes = [tuple(s) for s in level_shapes]
        sizes = [s[-1] for s in shapes]
        if len(shapes) < 2:
            raise ValueError(f"the pyramid_flow layout needs at least 2 stages, got level shapes {shapes}")
        if any(b != 2 * a for a, b in zip(sizes, sizes[1:])) or len({s[0] for s in shapes}) != 1:
            raise ValueError(
                f"the pyramid_flow layout needs each stage at twice the resolution of the one before, with the same "
                f"channels (its jumps upsample by 2), got level shapes {shapes}"
            )
        self.stage_windows(len(shapes))  # the bounds fit the stages
        return LevelGeometry.of(shapes, sizes, contexts=False)

    def check(self, prediction: str, schedule: NoiseSchedule) -> None:
        if not (PREDICTIONS.lookup(prediction).time_window and schedule.straight_path):
            raise ValueError(
                f"layout pyramid_flow runs stages of one straight-path (flow matching) trajectory: it needs "
                f"schedule 'flow' and prediction 'flow', got schedule {schedule.name!r} and prediction {prediction!r}"
            )

    def training_pair(self, geometry: LevelGeometry, levels: list[Tensor], noise: list[Tensor], level: int):
        return pf.stage_pair(levels, noise[-1], level, self.stage_windows(geometry.num_levels)[level])

    def initial_noise(self, geometry: LevelGeometry, level: int, finished: list[Tensor], n: int, generator, device):
        if not level:
            return super().initial_noise(geometry, level, finished, n, generator, device)
        return pf.renoise(finished[level - 1], self.stage_windows(geometry.num_levels)[level - 1][0], generator)

    def denoiser_options(self, level: int, num_levels: int, pixel_space: bool) -> dict:
        # only the last stage ends at clean data; the others end at a noisy point, which must not be clipped
        window = self.stage_windows(num_levels)[level]
        return {"clip_x0": pixel_space and level == num_levels - 1, "time_window": window}


LAYOUTS: Registry[type[Layout]] = Registry("layout")
for _cls in (NativeLayout, FridoLayout, PyramidFlowLayout):
    LAYOUTS.register(_cls.name, _cls)
