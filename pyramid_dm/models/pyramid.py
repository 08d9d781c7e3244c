"""Pyramid diffusion: the levels of a multi-scale first stage generated coarse to fine (Frido, Fan et al. 2023,
done at native resolution), by the same engine as pixel and latent diffusion."""

from __future__ import annotations

from ..diffusion import SAMPLERS
from ..errors import UserError
from ..stages import FirstStage, ImagePyramid
from .diffusion import LAYOUTS, LEVEL_TRAINING, DiffusionModel
from .latent import autoencoder_stage

FIRST_STAGES = ("image_pyramid", "autoencoder")


class PyramidDiffusion(DiffusionModel):
    """Coarse-to-fine diffusion over L >= 2 levels.

    Args:
        first_stage: ``image_pyramid`` (pixel space: the image average-pooled to each of ``resolutions``) or
            ``autoencoder`` (the levels of a multi-scale autoencoder, ``autoencoder_ckpt``).
        resolutions: the image pyramid's resolutions, coarse first, each dividing the next, the last the image size.
        scale_latents: per-level 1/std latent scale for an autoencoder's levels (see :class:`LatentDiffusion`).
        layout: ``native`` (each level at its own resolution, its own schedule shift and step budget) or ``frido``
            (Frido's own layout: every level at the finest resolution, one shared t in training, the same full
            schedule for every level, the context lerped with ``frido_noise_mix`` noise).
        level_samplers, level_steps: per-level sampler and step budget, coarse first (default: ``sampler`` and
            ``sample_steps`` for every level), e.g. ``[20, 8, 8]``.
        level_training: ``all`` (every level each step, the weighted sum) or ``sample`` (one level per step, drawn
            with probability ``level_weights``).
        level_weights: relative weight of each level's loss (default equal).
        conditioning_augmentation: training noises each level's context at a level t ~ U[0, this] of its schedule,
            given to the network (0 = clean contexts); ``sample_augmentation`` is the t used when sampling.
        shared_body, spade: the network (:class:`~pyramid_dm.nets.PyramidUNet`): one body for all levels or one per
            level; SPADE modulation by the context.
        shift_reference_resolution (of :class:`DiffusionModel`): with it each level's schedule is shifted by
            2 log(d_ref / d_level).
    """

    family = "pyramid"

    def __init__(
        self,
        image_size: int,
        channels: int,
        first_stage: str = "image_pyramid",
        resolutions: list[int] | None = None,
        autoencoder_ckpt: str | None = None,
        scale_latents: bool = True,
        layout: str = "native",
        level_samplers: list[str] | None = None,
        level_steps: list[int] | None = None,
        level_training: str = "all",
        level_weights: list[float] | None = None,
        conditioning_augmentation: float = 0.1,
        sample_augmentation: float = 0.0,
        frido_noise_mix: float = 0.1,
        shared_body: bool = True,
        spade: bool = False,
        **kwargs,
    ):
        for key, value, choices in [
            ("first_stage", first_stage, FIRST_STAGES),
            ("layout", layout, LAYOUTS),
            ("level_training", level_training, LEVEL_TRAINING),
        ]:
            if value not in choices:
                raise UserError(f"model.{key} {value!r} is not one of {list(choices)}")
        for key, value in [
            ("conditioning_augmentation", conditioning_augmentation),
            ("sample_augmentation", sample_augmentation),
            ("frido_noise_mix", frido_noise_mix),
        ]:
            if not 0 <= value < 1:
                raise UserError(f"model.{key} must lie in [0, 1), got {value}")
        super().__init__(image_size, channels, **kwargs)

    def build_first_stage(self) -> FirstStage:
        h = self.hparams
        if h.first_stage == "autoencoder":
            return autoencoder_stage(self, h.autoencoder_ckpt, "multi")
        if not h.resolutions:
            raise UserError(
                f"model.resolutions must list the image pyramid's resolutions, e.g. [{h.image_size // 4}, "
                f"{h.image_size // 2}, {h.image_size}]"
            )
        try:
            return ImagePyramid(h.channels, h.image_size, list(h.resolutions))
        except ValueError as e:
            raise UserError(f"model.resolutions: {e}") from None

    def initial_latent_scale(self) -> float:
        return float("nan") if self.hparams.first_stage == "autoencoder" and self.hparams.scale_latents else 1.0

    def check_levels(self) -> None:
        h = self.hparams
        for key in ("level_samplers", "level_steps", "level_weights"):
            if h.get(key) is not None:
                self.per_level(f"model.{key}", list(h[key]), None)
        for name in h.level_samplers or []:
            if name not in SAMPLERS:
                raise UserError(f"model.level_samplers: {name!r} is not one of {sorted(SAMPLERS)}")
        if any(int(s) < 1 for s in h.level_steps or []):
            raise UserError(f"model.level_steps must all be >= 1, got {h.level_steps}")
        if h.level_weights is not None and (min(h.level_weights) < 0 or sum(h.level_weights) <= 0):
            raise UserError(f"model.level_weights must be >= 0 with a positive sum, got {h.level_weights}")
