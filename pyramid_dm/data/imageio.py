"""Reading one image file, safely, for the shard writer and the loader alike.

- **Pixel limit**: the size an image's header declares is checked before any pixel is decoded; an image over
  ``max_pixels`` (default :data:`MAX_PIXELS`, 2^25 = 33.5 million, about 5800 x 5800; ``PYRAMID_DM_MAX_PIXELS`` or the
  ``max_pixels`` options change it) is rejected at the cost of reading its header, and so is anything Pillow itself
  calls a decompression bomb.
- **Bit depth**: 16-bit (and 32-bit integer) grayscale images are scaled to 8 bits (v / 257), not clipped to white;
  16-bit RGB is reduced by Pillow itself.
"""

from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
from PIL import Image

from ..errors import UserError

MAX_PIXELS = int(os.environ.get("PYRAMID_DM_MAX_PIXELS", 2**25))
HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(UserError):
    """An image that cannot be used; the message names it."""


def read_image(fp, what: str, channels: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """The image in ``fp`` (a path or a binary file object) as an 8-bit ``L`` (channels 1) or ``RGB`` (channels 3)
    image; ``channels`` None keeps grayscale images grayscale and makes the rest RGB. ``what`` names it in errors."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if _is_empty(fp):
        raise ImageError(f"{what}: the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > limit:
                    raise ImageError(
                        f"{what}: its header declares {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                        "(PYRAMID_DM_MAX_PIXELS / max_pixels); it was not decoded"
                    )
                img.load()
                return _eight_bit(img, channels)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own check, at open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        message = f"{what}: its header declares {size}, over the limit of {limit:,}; it was not decoded"
        raise ImageError(message) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>|'[^']*' ?$", "", str(exc)).strip() or type(exc).__name__
        raise ImageError(f"{what}: cannot decode image ({reason})") from exc


def _is_empty(fp) -> bool:
    if isinstance(fp, io.BytesIO):
        return fp.getbuffer().nbytes == 0
    return isinstance(fp, str | os.PathLike) and os.path.isfile(fp) and os.path.getsize(fp) == 0


def _eight_bit(img: Image.Image, channels: int | None) -> Image.Image:
    if img.mode in HIGH_BIT_DEPTH:
        arr = np.asarray(img, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if channels is None:
        channels = 1 if img.mode in ("L", "1", "LA", "F") else 3
    return img.convert("L" if channels == 1 else "RGB")
