"""LightningModules: they orchestrate training, validation, EMA and sampling; the math lives in ``diffusion``."""

from .diffusion import DiffusionModel, PixelDiffusion, UNetArgs, ema_net_from_checkpoint

__all__ = ["DiffusionModel", "PixelDiffusion", "UNetArgs", "ema_net_from_checkpoint"]
