"""Pyramid diffusion: the levels of a multi-scale first stage generated coarse to fine (Frido, Fan et al. 2023,
done at native resolution), by the same engine as pixel and latent diffusion."""

from __future__ import annotations

from .diffusion import DiffusionModel


class PyramidDiffusion(DiffusionModel):
    """Coarse-to-fine diffusion over L >= 2 levels (the recipe: :class:`pyramid_dm.engine.families.PyramidRecipe`).

    Args:
        first_stage: ``image_pyramid`` (pixel space: the image average-pooled to each of ``resolutions``),
            ``autoencoder`` (the levels of a multi-scale autoencoder, ``autoencoder_ckpt``) or ``latent_pyramid``
            (a single-level autoencoder's latent average-pooled to each of ``resolutions``).
        resolutions: the pyramid's resolutions, coarse first, each dividing the next, the last the image size (the
            latent size for ``latent_pyramid``).
        scale_latents: per-level 1/std latent scale for an autoencoder's levels (see :class:`LatentDiffusion`).
        layout: ``native`` (each level at its own resolution, its own schedule shift and step budget) or ``frido``
            (Frido's own layout: every level at the finest resolution, one shared t in training, the same full
            schedule for every level, the context lerped with ``frido_noise_mix`` noise) or ``pyramid_flow``
            (Pyramidal Flow Matching: the levels are the stages of one flow trajectory, each at twice the previous
            resolution, no context; needs ``schedule: flow``, ``prediction: flow``; ``stage_bounds`` are the stages'
            nominal windows, from 1 down to 0, default equal); see :mod:`pyramid_dm.diffusion.pyramid.layouts`.
        level_samplers, level_steps: per-level sampler and step budget, coarse first (default: ``sampler`` and
            ``sample_steps`` for every level), e.g. ``[20, 8, 8]``.
        level_training: ``all`` (every level each step, the weighted sum) or ``sample`` (one level per step, drawn
            with probability ``level_weights``).
        level_weights: relative weight of each level's loss (default equal).
        conditioning_augmentation: training noises each level's context at a time t ~ U[0, this] of its schedule,
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
        stage_bounds: list[float] | None = None,
        shared_body: bool = True,
        spade: bool = False,
        **kwargs,
    ):
        super().__init__(image_size, channels, **kwargs)
