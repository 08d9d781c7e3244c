"""Level geometry: the one description of a (pyramid of) level(s) that the engine and the first stages share.

A *level* is one latent of the first stage, coarse first: the image itself (pixel diffusion), an autoencoder's latent
(latent diffusion), or one of L resolutions (pyramid diffusion: an image pyramid or a multi-scale autoencoder). Level l
has a shape (C_l, H_l, W_l) and is diffused on a square *grid* of size ``grid_sizes[l]``: its own resolution, or a
finer one (the Frido layout runs every level at the finest). Its *context* is the finished coarser levels,
nearest-upsampled to its grid and stacked on channels (:mod:`.pyramid`). Other meanings of "level" have other names:
the diffusion noise level is ``sigma`` (or the network input ``c_noise``), a context's augmentation time ``aug_t``, a
UNet resolution a *stage*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from .context import context_of, snap_to, upsample_to

Shape = tuple[int, int, int]


def check_resolutions(resolutions: Sequence[int], image_size: int) -> list[int]:
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


@dataclass(frozen=True)
class LevelGeometry:
    """``level_shapes``: (C, H, W) per level, coarse first; ``grid_sizes``: where each is diffused (default: its own
    resolution); ``contexts``: whether a level sees the finished coarser ones as a context (Pyramidal Flow's stages
    continue one trajectory instead)."""

    level_shapes: tuple[Shape, ...]
    grid_sizes: tuple[int, ...]
    contexts: bool = True

    @classmethod
    def of(
        cls, level_shapes: Sequence[Sequence[int]], grid_sizes: Sequence[int] | None = None, contexts: bool = True
    ) -> LevelGeometry:
        shapes = tuple(tuple(int(v) for v in s) for s in level_shapes)
        grids = tuple(int(g) for g in grid_sizes) if grid_sizes is not None else tuple(s[-1] for s in shapes)
        if len(grids) != len(shapes):
            raise ValueError(f"{len(grids)} grid sizes for {len(shapes)} levels")
        return cls(shapes, grids, contexts)

    @classmethod
    def image_pyramid(cls, channels: int, image_size: int, resolutions: Sequence[int]) -> LevelGeometry:
        return cls.of([(channels, r, r) for r in check_resolutions(resolutions, image_size)])

    @property
    def num_levels(self) -> int:
        return len(self.level_shapes)

    def resolution(self, level: int) -> int:
        return self.level_shapes[level][-1]

    def grid_shape(self, level: int) -> Shape:
        s = self.grid_sizes[level]
        return (self.level_shapes[level][0], s, s)

    def context_channels(self, level: int) -> int:
        return sum(c for c, _, _ in self.level_shapes[:level]) if self.contexts else 0

    def to_grid(self, z: Tensor, level: int) -> Tensor:
        """A level at its own resolution, nearest-upsampled to its grid."""
        return upsample_to(z, self.grid_sizes[level])

    def from_grid(self, z: Tensor, level: int) -> Tensor:
        """A level generated on its grid, average-pooled back to its own resolution (Frido's snapping)."""
        return snap_to(z, self.resolution(level))

    def downsample(self, images: Tensor) -> list[Tensor]:
        """The image average-pooled to every level's resolution (an image pyramid's levels)."""
        return [snap_to(images, self.resolution(level)) for level in range(self.num_levels)]

    def context(self, finished: list[Tensor], level: int) -> Tensor | None:
        """The finished coarser levels on ``level``'s grid, stacked on channels (None for the first level)."""
        return context_of(finished, self.grid_sizes[level]) if self.contexts else None
