"""Random crops of real colour photographs at 64-128 px: the download-free source with real high frequencies.

The photographs are the colour ones that ship inside scikit-image (``skimage/data``) and scikit-learn
(``sklearn/datasets/images``), read as files (nothing is downloaded). Each photo is split into two disjoint
regions: a vertical strip on its right side for validation and the rest for training, so that **no validation pixel
is ever seen in training**. A crop is a square of ``size * scale`` photo pixels (``scale`` drawn log-uniformly from
the given range, clipped to the region), resized to ``size x size`` with Lanczos filtering; its label is the photo.
Everything is deterministic by ``seed``. The set is small in content (ten photographs): good for what happens at
each scale, not for a claim about diversity.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from .imageio import read_image
from .sources import Example, ImageSet, SourceError

# name -> (package, path inside it); every one a colour photograph (RGB, no alpha), 300 to 1411 px on a side
PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "hubble": ("skimage", "data/hubble_deep_field.jpg"),
    "ihc": ("skimage", "data/ihc.png"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}


def photo_path(name: str) -> Path:
    package, inside = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip = {"skimage": "scikit-image", "sklearn": "scikit-learn"}[package]
        raise SourceError(f"the photos source needs {pip} for photo {name!r} (pip install {pip})")
    path = Path(spec.submodule_search_locations[0]) / inside
    if not path.is_file():
        raise SourceError(f"photo {name!r}: {path} is missing from the installed {package}")
    return path


@cache
def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8."""
    path = photo_path(name)
    return np.asarray(read_image(path, str(path), channels=3))


@dataclass(frozen=True)
class Box:
    photo: str
    top: int
    left: int
    side: int

    def crop(self, size: int) -> np.ndarray:
        patch = load_photo(self.photo)[self.top : self.top + self.side, self.left : self.left + self.side]
        if self.side == size:
            return np.ascontiguousarray(patch)
        return np.asarray(Image.fromarray(patch).resize((size, size), Image.LANCZOS))

    def __str__(self) -> str:
        return f"{self.photo}[{self.top}:{self.top + self.side}, {self.left}:{self.left + self.side}]"


def regions(name: str, val_fraction: float, largest: int) -> dict[str, tuple[int, int, int, int]]:
    """``{"train": (top, left, height, width), "val": ...}`` of one photo: validation is a strip on the right of width
    ``val_fraction`` of the photo's, widened to hold a ``largest``-pixel crop where the photo allows it."""
    h, w = load_photo(name).shape[:2]
    strip = min(max(round(val_fraction * w), largest), w // 2)
    return {"train": (0, 0, h, w - strip), "val": (0, w - strip, h, strip)}


def boxes(split: str, count: int, size: int, scale: tuple[float, float], val_fraction: float, seed: int) -> list[Box]:
    """``count`` crops of ``split``, the photos taken in turn (labels balanced), positions and scales seeded."""
    lo, hi = scale
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}[split]])
    names, out = list(PHOTOS), []
    for i in range(count):
        name = names[i % len(names)]
        top, left, height, width = regions(name, val_fraction, math.ceil(size * hi))[split]
        side = min(round(size * math.exp(rng.uniform(math.log(lo), math.log(hi)))), height, width)
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        out.append(Box(name, top + int(y), left + int(x), side))
    return out


def photo_crops(
    size: int = 64,
    count: int = 10000,
    val_count: int = 1000,
    scale: tuple[float, float] = (1.0, 2.0),
    val_fraction: float = 0.25,
    seed: int = 0,
) -> ImageSet:
    """Crops of the ten photographs at ``size`` px: ``count`` for training and ``val_count`` for validation, each
    ``size * scale`` photo pixels on a side (``scale`` >= 1: a crop is never upsampled beyond the photo's own
    pixels; the side is clipped to the region). Labels: the photo (classes = :data:`PHOTOS`' names)."""
    lo, hi = (float(s) for s in scale)
    if not 1.0 <= lo <= hi:
        raise SourceError(f"photos: scale must be MIN MAX with 1 <= MIN <= MAX, got {lo} {hi}")
    if not 0 < val_fraction < 0.5:
        raise SourceError(f"photos: val_fraction must be in (0, 0.5), got {val_fraction}")
    if size < 8 or count < 1 or val_count < 1:
        raise SourceError(f"photos: size >= 8, count >= 1 and val_count >= 1 needed, got {size}, {count}, {val_count}")
    for name in PHOTOS:  # every region must hold one crop of ``size`` at least (never upsample)
        for split, (_, _, height, width) in regions(name, val_fraction, math.ceil(size * hi)).items():
            if min(height, width) < size:
                raise SourceError(
                    f"photos: the {split} region of photo {name!r} is {height}x{width} px, smaller than --size {size}"
                )
    labels = {name: i for i, name in enumerate(PHOTOS)}
    splits = {}
    for split, n in (("train", count), ("val", val_count)):
        splits[split] = [
            Example(f"{split}{i:08d}", labels[box.photo], partial(box.crop, size), str(box))
            for i, box in enumerate(boxes(split, n, size, (lo, hi), val_fraction, seed))
        ]
    return ImageSet(f"photos:{size}px:scale{lo:g}-{hi:g}:seed{seed}", list(PHOTOS), splits)
