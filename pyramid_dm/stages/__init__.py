"""First stages: what the diffusion engine diffuses in (identity, autoencoder latents, or a pyramid of levels)."""

from .autoencoder import AutoencoderStage, autoencoder_stage, load_autoencoder_checkpoint
from .base import FirstStage
from .identity import IdentityStage
from .image_pyramid import ImagePyramid, LatentPyramid, check_resolutions

__all__ = [
    "AutoencoderStage",
    "autoencoder_stage",
    "FirstStage",
    "IdentityStage",
    "ImagePyramid",
    "LatentPyramid",
    "check_resolutions",
    "load_autoencoder_checkpoint",
]
