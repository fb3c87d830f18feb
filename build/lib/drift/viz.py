"""Small image helpers: sample grids as PNG."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def save_grid(images: torch.Tensor, path: str, scale: int = 3, pad: int = 2) -> None:
    """images (rows, cols, 3, H, W) in [0, 1] -> a PNG grid, upscaled by ``scale`` (nearest)."""
    r, c, _, h, w = images.shape
    hh, ww = h * scale, w * scale
    canvas = np.full((r * (hh + pad) + pad, c * (ww + pad) + pad, 3), 255, dtype=np.uint8)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    for i in range(r):
        for j in range(c):
            tile = arr[i, j].repeat(scale, 0).repeat(scale, 1)
            y, x = pad + i * (hh + pad), pad + j * (ww + pad)
            canvas[y : y + hh, x : x + ww] = tile
    Image.fromarray(canvas).save(path)
