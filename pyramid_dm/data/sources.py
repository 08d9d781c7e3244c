"""Real image sources turned into deterministic train/val example lists: image folders, IDX files, sklearn digits.

Every source yields :class:`Example`s whose ``load()`` returns a uint8 array, (H, W) for grayscale or (H, W, 3) for RGB.
Order is deterministic: folders are sorted, then a seeded permutation picks the validation examples.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import UserError
from .imageio import read_image

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


class SourceError(UserError):
    """A data source that cannot be read; the message names the path at fault."""


@dataclass
class Example:
    key: str
    label: int | None
    load: Callable[[], np.ndarray]
    origin: str = ""  # where it came from, for error messages


@dataclass
class ImageSet:
    source: str
    classes: list[str] | None
    splits: dict[str, list[Example]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # paths a folder source left out by its rule, for the report


def _split(examples: list[Example], val_fraction: float, seed: int) -> dict[str, list[Example]]:
    if not 0 <= val_fraction < 1:
        raise SourceError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = int(round(len(examples) * val_fraction))
    if val_fraction > 0 and len(examples) >= 2:
        n_val = max(n_val, 1)  # a small folder still gets a validation image: fit validates, and the split is not empty
    val, train = order[:n_val], order[n_val:]  # permuted, so that no shard holds a single class
    return {"train": [examples[i] for i in train], "val": [examples[i] for i in val]}


def _array_examples(images: np.ndarray, labels: np.ndarray | None, prefix: str) -> list[Example]:
    return [
        Example(f"{prefix}{i:08d}", None if labels is None else int(labels[i]), partial(images.__getitem__, i))
        for i in range(len(images))
    ]


# ---- image folder ---------------------------------------------------------------------------------------------------


def _load_image_file(path: Path, max_pixels: int | None = None) -> np.ndarray:
    return np.array(read_image(path, str(path), max_pixels=max_pixels))


def _stray_reason(p: Path) -> str:
    return "a broken or looping symlink" if p.is_symlink() and not p.exists() else "beside the class folders"


def image_folder(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    """A folder of PNG/JPEG images; one sub-folder per class (sorted names = class ids), or a flat unlabelled folder.

    The rule: with class sub-folders, the images directly inside each are the data (a class folder may be a symlink,
    and is followed); folders nested deeper, files that are not PNG/JPEG, images beside the class folders and hidden
    names (starting with ".") are left out, and listed in ``ignored`` (``shards`` prints them). A class folder that
    holds no image, cannot be listed (a symlink loop) or links back to the folder or above it is an error naming it:
    it would be a class without images."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"image folder {root} does not exist or is not a directory")
    ignored: list[str] = []

    def listing(d: Path) -> list[Path]:
        try:
            entries = sorted(d.iterdir())
        except OSError as exc:
            raise SourceError(f"image folder {root}: cannot list {d} ({exc.strerror or exc})") from None
        ignored.extend(f"{p} (hidden name)" for p in entries if p.name.startswith("."))
        return [p for p in entries if not p.name.startswith(".")]

    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    top = listing(root)
    class_dirs = [d for d in top if d.is_dir()]
    if class_dirs:
        classes = [d.name for d in class_dirs]
        items, empty = [], []
        for label, d in enumerate(class_dirs):
            target = d.resolve()
            if target == root.resolve() or target in root.resolve().parents:
                raise SourceError(f"image folder {root}: class folder {d} links to {target}, the folder or above it")
            found = 0
            for p in listing(d):
                if is_image(p):
                    items.append((p, label))
                    found += 1
                else:
                    ignored.append(f"{p}{'/ (nested folder)' if p.is_dir() else ' (not a PNG/JPEG image)'}")
            if not found:
                empty.append(str(d))
        if empty and items:
            raise SourceError(
                f"image folder {root}: class folder(s) {empty} hold no {'/'.join(IMAGE_SUFFIXES)} image: each "
                "sub-folder is a class, so add images or remove the folder"
            )
        ignored += [f"{p} ({_stray_reason(p)})" for p in top if not p.is_dir()]
    else:
        classes, items = None, [(p, None) for p in top if is_image(p)]
        ignored += [f"{p} (not a PNG/JPEG image)" for p in top if not is_image(p)]
    if not items:
        raise SourceError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    for path in ignored[:20]:
        log.warning("image folder %s: ignored %s", root, path)
    examples = [
        Example(f"img{i:08d}", label, partial(_load_image_file, p), str(p)) for i, (p, label) in enumerate(items)
    ]
    return ImageSet(f"folder:{root.resolve()}", classes, _split(examples, val_fraction, seed), ignored)


# ---- IDX (MNIST / Fashion-MNIST) -------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 2051 = uint8 images (N, H, W), 2049 = uint8 labels (N,)."""
    path = Path(path)
    try:
        data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read IDX file ({exc})") from exc
    magic = int.from_bytes(data[:4], "big")
    dims = {2051: 3, 2049: 1}.get(magic)
    if dims is None:
        raise SourceError(f"{path}: not an IDX uint8 image/label file (magic number {magic})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    offset = 4 + 4 * dims
    if len(data) - offset != int(np.prod(shape)):
        raise SourceError(f"{path}: header says {shape} but the file holds {len(data) - offset} bytes of data")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise SourceError(f"IDX directory {root} has no {stem}[.gz]")


def idx_dataset(root: str | Path, classes: list[str] | None = None) -> ImageSet:
    """MNIST-format directory: train-{images-idx3,labels-idx1}-ubyte[.gz] and t10k-... (the test split is val)."""
    root = Path(root)
    if not root.is_dir():
        hint = " (install it with `apt-get install dataset-fashion-mnist`)" if root == FASHION_MNIST_DIR else ""
        raise SourceError(f"IDX directory {root} does not exist{hint}")
    splits = {}
    for split, stem in (("train", "train"), ("val", "t10k")):
        images = read_idx(_find_idx(root, f"{stem}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(root, f"{stem}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise SourceError(f"{root}: {stem} has {len(images)} images but {len(labels)} labels")
        splits[split] = _array_examples(images, labels, prefix=split)
    n = int(max(int(ex.label) for ex in splits["train"])) + 1
    names = classes or (FASHION_MNIST_CLASSES if root == FASHION_MNIST_DIR else [str(i) for i in range(n)])
    return ImageSet(f"idx:{root}", names, splits)


# ---- scikit-learn digits ---------------------------------------------------------------------------------------------


def sklearn_digits(val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    """UCI optical digits from scikit-learn (1,797 real 8x8 images, levels 0..16 mapped exactly to 0..255)."""
    if importlib.util.find_spec("sklearn") is None:
        raise SourceError("the digits source needs scikit-learn (pip install scikit-learn)")
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)
    examples = _array_examples(images, d.target, prefix="digit")
    return ImageSet("sklearn:digits", [str(i) for i in range(10)], _split(examples, val_fraction, seed))


SOURCES = {"folder": image_folder, "idx": idx_dataset, "digits": sklearn_digits}
