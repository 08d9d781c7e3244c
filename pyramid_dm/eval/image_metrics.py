"""Metrics computed on the images themselves, with no feature network (nothing to download), that see scales:
``swd`` (sliced Wasserstein distance per Laplacian level, :mod:`.swd`) and ``spectrum`` (power-spectrum error per
octave band, :mod:`.spectrum`). Each is a registered part: a function ``(real, fake, seed) -> {name: value}`` of two
image batches (N, C, H, W) in [-1, 1]; ``evaluate --metrics``, the in-training :class:`SampleQuality` callback and
``compare`` take their names. Lower is better for every value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..data.datamodule import read_split
from ..data.manifest import Manifest
from ..registry import Registry
from .spectrum import spectrum_error
from .swd import swd

ImageMetric = Callable[[Tensor, Tensor, int], dict[str, float]]
IMAGE_METRICS: Registry[ImageMetric] = Registry("image metric")
IMAGE_METRICS.register("swd", lambda real, fake, seed: swd(real, fake, seed=seed))
IMAGE_METRICS.register("spectrum", lambda real, fake, seed: spectrum_error(real, fake))


def real_images(manifest: Manifest, split: str, image_size: int, limit: int) -> Tensor:
    """The first ``limit`` images of ``split`` at ``image_size``, (N, C, H, W) float32 in [-1, 1]."""
    return torch.cat([images.float() for images, _ in read_split(manifest, split, limit, image_size)])


def image_metrics(names: Sequence[str], real: Tensor, fake: Tensor, seed: int = 0) -> dict[str, float]:
    """Every metric in ``names`` of ``fake`` against ``real`` (both cut to the smaller count)."""
    out, fake = {}, fake.float().cpu()
    for name in names:
        out.update(IMAGE_METRICS.lookup(name)(real, fake, seed))
    return out
