"""Image helpers without torchvision: [-1, 1] floats to uint8, and sample grids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8 in [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 1, min_size: int = 256) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> one uint8 (3, H', W') grid; small images are enlarged (nearest) to >= min_size px."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    x = to_uint8(images).cpu()
    x = x.expand(n, 3, h, w) if c == 1 else x[:, :3]
    grid = torch.full((3, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    scale = max(1, math.ceil(min_size / max(grid.shape[1:])))
    if scale > 1:
        grid = F.interpolate(grid[None].float(), scale_factor=scale, mode="nearest")[0].to(torch.uint8)
    return grid


def save_png(grid: Tensor, path) -> None:
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
