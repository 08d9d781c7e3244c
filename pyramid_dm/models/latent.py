"""Latent diffusion (LDM, Rombach et al. 2022): the same engine in a frozen autoencoder's latent space."""

from __future__ import annotations

from ..errors import UserError
from ..stages import AutoencoderStage, FirstStage, load_autoencoder_checkpoint
from .diffusion import DiffusionModel


def autoencoder_stage(model: DiffusionModel, path: str, levels: str) -> FirstStage:
    """The frozen autoencoder of checkpoint ``path`` (model.autoencoder_ckpt), checked against the data and the
    number of levels the model wants (``single`` or ``multi``)."""
    ae = load_autoencoder_checkpoint(path)
    h, ah = model.hparams, ae["hparams"]
    if (ah["channels"], ah["image_size"]) != (h.channels, h.image_size):
        raise UserError(
            f"model.autoencoder_ckpt {path!r} was trained on {ah['channels']}x{ah['image_size']}x{ah['image_size']} "
            f"images but the data gives {h.channels}x{h.image_size}x{h.image_size}"
        )
    n = int(ah.get("levels", 1))
    if levels == "single" and n != 1:
        raise UserError(
            f"model.autoencoder_ckpt {path!r} is a {n}-level multi-scale autoencoder; use "
            "pyramid_dm.models.PyramidDiffusion with first_stage: autoencoder for it"
        )
    if levels == "multi" and n < 2:
        raise UserError(
            f"model.autoencoder_ckpt {path!r} has a single latent level; pyramid diffusion needs a multi-scale "
            "autoencoder (levels >= 2), or use pyramid_dm.models.LatentDiffusion"
        )
    return AutoencoderStage(ah, ae["state_dict"])


class LatentDiffusion(DiffusionModel):
    """Diffusion in the latent space of a frozen autoencoder trained by stage one.

    Args:
        autoencoder_ckpt: the stage-one checkpoint (an ``AutoencoderModel`` run's ``checkpoints/last.ckpt``).
        scale_latents: multiply the latent by 1/std, fitted on the first training batch of all ranks together and
            saved with the model (LDM's ``scale_by_std``); False keeps the latent as it is.
        The rest: :class:`DiffusionModel`. The cost of decoding is counted in every sample's FLOPs.
    """

    family = "latent"

    def __init__(
        self, image_size: int, channels: int, autoencoder_ckpt: str = "", scale_latents: bool = True, **kwargs
    ):
        super().__init__(image_size, channels, **kwargs)

    def build_first_stage(self) -> FirstStage:
        return autoencoder_stage(self, self.hparams.autoencoder_ckpt, "single")

    def initial_latent_scale(self) -> float:
        return float("nan") if self.hparams.scale_latents else 1.0
