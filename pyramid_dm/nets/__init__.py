"""Networks: plain ``nn.Module``s that know nothing about diffusion."""

from .autoencoder import MultiScaleAutoencoder
from .discriminator import PatchDiscriminator
from .encoder_classifier import EncoderClassifier
from .pyramid_unet import PyramidUNet
from .quantizer import DiagonalGaussian, VectorQuantizer
from .registry import NETWORKS, NetSpec
from .unet import UNet

__all__ = [
    "NETWORKS",
    "DiagonalGaussian",
    "EncoderClassifier",
    "MultiScaleAutoencoder",
    "NetSpec",
    "PatchDiscriminator",
    "PyramidUNet",
    "UNet",
    "VectorQuantizer",
]
