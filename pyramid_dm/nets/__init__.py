"""Networks: plain ``nn.Module``s that know nothing about diffusion."""

from .autoencoder import MultiScaleAutoencoder
from .discriminator import PatchDiscriminator
from .pyramid_unet import PyramidUNet
from .quantizer import DiagonalGaussian, VectorQuantizer
from .unet import UNet

__all__ = ["DiagonalGaussian", "MultiScaleAutoencoder", "PatchDiscriminator", "PyramidUNet", "UNet", "VectorQuantizer"]
