"""The first stages a pyramid can be built on, by the name in ``model.first_stage``: a new one is one builder
registered in :data:`PYRAMID_FIRST_STAGES` (pixel and latent diffusion have one first stage each: the identity and a
single-level autoencoder, chosen by their recipes in :mod:`.families`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError
from ..registry import Registry
from ..stages import FirstStage, ImagePyramid, LatentPyramid, autoencoder_stage


@dataclass(frozen=True)
class FirstStageSpec:
    """``build(o, p, recorded)`` -> the stage, from the model's options ``o`` (:class:`~.families.DiffusionOptions`),
    the pyramid's ``p`` (:class:`~.families.PyramidOptions`) and what a checkpoint recorded of it; ``latent``: its
    levels are learned latents (scaled to unit variance when ``scale_latents``), not pixels."""

    build: Callable[..., FirstStage]
    latent: bool


def image_pyramid(o, p, recorded: dict | None) -> FirstStage:
    if not p.resolutions:
        raise UserError(
            f"model.resolutions must list the image pyramid's resolutions, e.g. [{o.image_size // 4}, "
            f"{o.image_size // 2}, {o.image_size}]"
        )
    try:
        return ImagePyramid(o.channels, o.image_size, list(p.resolutions))
    except ValueError as e:
        raise UserError(f"model.resolutions: {e}") from None


def multiscale_autoencoder(o, p, recorded: dict | None) -> FirstStage:
    return autoencoder_stage(p.autoencoder_ckpt, o.channels, o.image_size, "multi", recorded)


def latent_pyramid(o, p, recorded: dict | None) -> FirstStage:
    inner = autoencoder_stage(p.autoencoder_ckpt, o.channels, o.image_size, "single", recorded)
    size = inner.level_shapes[0][-1]
    if not p.resolutions:
        raise UserError(
            f"model.resolutions must list the latent pyramid's resolutions, ending at the autoencoder's latent "
            f"size {size}, e.g. [{size // 4}, {size // 2}, {size}]"
        )
    try:
        return LatentPyramid(inner, list(p.resolutions))
    except ValueError as e:
        raise UserError(f"model.resolutions: {e}") from None


PYRAMID_FIRST_STAGES: Registry[FirstStageSpec] = Registry("pyramid first stage")
PYRAMID_FIRST_STAGES.register("image_pyramid", FirstStageSpec(image_pyramid, latent=False))
PYRAMID_FIRST_STAGES.register("autoencoder", FirstStageSpec(multiscale_autoencoder, latent=True))
PYRAMID_FIRST_STAGES.register("latent_pyramid", FirstStageSpec(latent_pyramid, latent=True))
