"""A parameter-free image pyramid (cascaded diffusion, Ho et al. 2022; f-DM's downsampling signals): level l is the
image average-pooled to ``resolutions[l]``. Pyramid diffusion on it generates a small image first and then each
larger one conditioned on the last, all in pixel space; the finest level is the sample."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import FirstStage


def check_resolutions(resolutions: list[int], image_size: int) -> list[int]:
    """Increasing resolutions, each dividing the next and the last equal to ``image_size``."""
    res = [int(r) for r in resolutions]
    if len(res) < 2:
        raise ValueError(f"an image pyramid needs at least 2 levels, got resolutions {res}")
    if res[-1] != image_size:
        raise ValueError(f"the finest pyramid resolution must be the image size {image_size}, got resolutions {res}")
    for a, b in zip(res, res[1:]):
        if a >= b or b % a:
            raise ValueError(
                f"pyramid resolutions {res} must increase, each dividing the next (and the image size {image_size}); "
                f"{a} does not divide {b}"
            )
    return res


class ImagePyramid(FirstStage):
    pixel_space = True

    def __init__(self, channels: int, image_size: int, resolutions: list[int]):
        super().__init__()
        self.resolutions = check_resolutions(resolutions, image_size)
        self.image_size = image_size
        self.level_shapes = [(channels, r, r) for r in self.resolutions]

    def encode(self, images: Tensor) -> list[Tensor]:
        return [F.avg_pool2d(images, self.image_size // r) if r < self.image_size else images for r in self.resolutions]

    def decode(self, levels: list[Tensor]) -> Tensor:
        x = levels[-1]
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="nearest")
        return x
