"""Latent diffusion (LDM, Rombach et al. 2022): the same engine in a frozen autoencoder's latent space."""

from __future__ import annotations

from .diffusion import DiffusionModel


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
