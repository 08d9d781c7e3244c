"""Pixel diffusion's first stage: the image itself, one level."""

from __future__ import annotations

from torch import Tensor

from .base import FirstStage


class IdentityStage(FirstStage):
    pixel_space = True

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.level_shapes = [(channels, image_size, image_size)]
        self.image_shape = (channels, image_size, image_size)

    def encode(self, images: Tensor) -> list[Tensor]:
        return [images]

    def decode(self, levels: list[Tensor]) -> Tensor:
        return levels[-1]
