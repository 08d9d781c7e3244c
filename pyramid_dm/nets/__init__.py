"""Networks: plain ``nn.Module``s that know nothing about diffusion."""

from .autoencoder import MultiScaleAutoencoder
from .discriminator import PatchDiscriminator
from .encoder_classifier import EncoderClassifier
from .pyramid_unet import PyramidUNet
from .quantizer import DiagonalGaussian, VectorQuantizer
from .unet import UNet

__all__ = [
    "DiagonalGaussian",
    "EncoderClassifier",
    "MultiScaleAutoencoder",
    "PatchDiscriminator",
    "PyramidUNet",
    "UNet",
    "VectorQuantizer",
]
