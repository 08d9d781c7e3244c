"""A parameter-free image pyramid (cascaded diffusion, Ho et al. 2022; f-DM's downsampling signals): level l is the
image average-pooled to ``resolutions[l]``. Pyramid diffusion on it generates a small image first and then each
larger one conditioned on the last, all in pixel space; the finest level is the sample. The pooling and upsampling
are the level geometry's (:class:`~pyramid_dm.diffusion.pyramid.levels.LevelGeometry`)."""

from __future__ import annotations

from torch import Tensor

from ..diffusion.pyramid.context import upsample_to
from ..diffusion.pyramid.levels import LevelGeometry, check_resolutions
from .base import FirstStage

__all__ = ["ImagePyramid", "LatentPyramid", "check_resolutions"]


class ImagePyramid(FirstStage):
    pixel_space = True

    def __init__(self, channels: int, image_size: int, resolutions: list[int]):
        super().__init__()
        self.geometry = LevelGeometry.image_pyramid(channels, image_size, resolutions)
        self.resolutions = [s[-1] for s in self.geometry.level_shapes]
        self.image_size = image_size
        self.image_shape = (channels, image_size, image_size)
        self.level_shapes = list(self.geometry.level_shapes)

    def encode(self, images: Tensor) -> list[Tensor]:
        return self.geometry.downsample(images)

    def decode(self, levels: list[Tensor]) -> Tensor:
        return upsample_to(levels[-1], self.image_size)


class LatentPyramid(FirstStage):
    """A pyramid of one frozen single-level stage's latent (an autoencoder's), average-pooled to ``resolutions`` (the
    last its own latent size): the image pyramid in latent space. Its levels share one latent scale
    (``shared_scale``), so that a coarse level stays the average of the finer one after scaling, as the pyramid-flow
    layout's stage jumps need."""

    shared_scale = True

    def __init__(self, inner: FirstStage, resolutions: list[int]):
        super().__init__()
        if inner.num_levels != 1:
            raise ValueError(f"a latent pyramid pools a single-level stage; this one has {inner.num_levels} levels")
        channels, size, _ = inner.level_shapes[0]
        self.inner = inner
        self.geometry = LevelGeometry.of([(channels, r, r) for r in check_resolutions(resolutions, size)])
        self.image_shape = inner.image_shape
        self.level_shapes = list(self.geometry.level_shapes)

    def record(self) -> dict | None:
        return self.inner.record()

    def fingerprint(self) -> str | None:
        return self.inner.fingerprint()

    def encode(self, images: Tensor) -> list[Tensor]:
        return self.geometry.downsample(self.inner.encode(images)[0])

    def unpack(self, packed: Tensor) -> list[Tensor]:
        """Encoded shards hold the autoencoder's latent; the pyramid pools it as :meth:`encode` does."""
        return self.geometry.downsample(self.inner.unpack(packed)[0])

    def decode(self, levels: list[Tensor]) -> Tensor:
        return self.inner.decode([upsample_to(levels[-1], self.level_shapes[-1][-1])])
