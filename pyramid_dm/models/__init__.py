"""LightningModules: they orchestrate training, validation, EMA and sampling; the math lives in ``diffusion``."""

from .autoencoder import AutoencoderModel
from .diffusion import DiffusionModel, PixelDiffusion, UNetArgs, ema_net_from_checkpoint
from .latent import LatentDiffusion
from .pyramid import PyramidDiffusion

__all__ = [
    "AutoencoderModel",
    "DiffusionModel",
    "LatentDiffusion",
    "PixelDiffusion",
    "PyramidDiffusion",
    "UNetArgs",
    "ema_net_from_checkpoint",
]
