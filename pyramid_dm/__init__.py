"""pyramid_dm: efficient diffusion models (pixel, latent, pyramid) on PyTorch Lightning."""

__version__ = "0.1.0"
