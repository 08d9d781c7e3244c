"""LightningModules: they orchestrate training, validation, EMA and logging; the engine (``pyramid_dm.engine``) and
the math (``pyramid_dm.diffusion``) do the rest."""

from ..engine import ema_net_from_checkpoint
from .autoencoder import AutoencoderModel
from .classifier import NoisyClassifier
from .common import UNetArgs
from .diffusion import DiffusionModel, PixelDiffusion
from .latent import LatentDiffusion
from .pyramid import PyramidDiffusion

__all__ = [
    "AutoencoderModel",
    "DiffusionModel",
    "LatentDiffusion",
    "NoisyClassifier",
    "PixelDiffusion",
    "PyramidDiffusion",
    "UNetArgs",
    "ema_net_from_checkpoint",
]
