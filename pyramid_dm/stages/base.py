"""What every first stage provides to the diffusion engine: a list of latent levels, coarse first.

Pixel, latent and pyramid diffusion differ only here: the identity (one level, the image), an autoencoder (one level,
its latent) or a pyramid (L levels at their own resolutions: an image pyramid or a multi-scale autoencoder).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FirstStage(nn.Module):
    """A frozen map images <-> levels. Subclasses set ``level_shapes`` ((C, H, W) per level, coarse first)."""

    level_shapes: list[tuple[int, int, int]]
    image_shape: tuple[int, int, int]  # (C, H, W) of the images it encodes
    pixel_space: bool = False  # levels are images in [-1, 1] (identity, image pyramid): denoised levels are clipped
    shared_scale: bool = False  # the levels are poolings of one latent: one latent scale (the finest's) for all

    @property
    def num_levels(self) -> int:
        return len(self.level_shapes)

    def encode(self, images: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def decode(self, levels: list[Tensor]) -> Tensor:
        """Images in [-1, 1] (before clamping) from the first ``len(levels)`` levels (all levels: the sample; fewer:
        the coarse-only preview of a coarse-to-fine strip)."""
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """The identity of a trained stage's weights, recorded by ``shards encode`` in the shards it writes; None: a
        stage with nothing learned to encode with (identity, image pyramid), whose training reads images."""
        return None

    def pack(self, levels: list[Tensor]) -> Tensor:
        """The levels of a batch as one (B, D) tensor, finest last (what encoded shards store per sample)."""
        return torch.cat([z.flatten(1) for z in levels], dim=1)

    def unpack(self, packed: Tensor) -> list[Tensor]:
        """This stage's levels of a (B, D) batch of encoded shards: :meth:`pack`'s inverse here; a stage built on
        another (a latent pyramid) derives its levels from that one's."""
        sizes = [c * h * w for c, h, w in self.level_shapes]
        if packed.ndim != 2 or packed.shape[1] != sum(sizes):
            raise ValueError(
                f"encoded latents of shape {tuple(packed.shape)} do not hold this first stage's levels "
                f"{self.level_shapes} ({sum(sizes)} values per sample)"
            )
        parts = packed.split(sizes, dim=1)
        return [p.reshape(-1, *shape) for p, shape in zip(parts, self.level_shapes)]

    def record(self) -> dict | None:
        """What a checkpoint must hold, besides the weights, to rebuild this stage without the files it was built
        from (an autoencoder's hyperparameters); None when its options say it all."""
        return None

    def train(self, mode: bool = True):  # frozen: never leaves eval mode (Lightning calls .train() on the model)
        return super().train(False)
