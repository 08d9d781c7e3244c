"""Networks: plain ``nn.Module``s that know nothing about diffusion."""

from .unet import UNet

__all__ = ["UNet"]
