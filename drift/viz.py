"""Small image helpers: sample grids as PNG."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MIN_TILE = 96
"""Tiles smaller than this are upscaled (nearest, by a whole factor, at most ``max_scale``) so shapes-world
images stay legible."""
MAX_TILE = 256
"""Tiles larger than this are downscaled (antialiased) to it: a 512 px SD3 grid of 8 x 8 stays ~2,100 px wide."""


def tile_side(h: int, max_scale: int = 3, min_tile: int = MIN_TILE, max_tile: int = MAX_TILE) -> int:
    """The side a (h x h) image gets in a grid: h x k (k = the whole factor that brings it closest to min_tile
    from below, 1 <= k <= max_scale) if h < min_tile; min(h, max_tile) otherwise."""
    if h < min_tile:
        return h * max(1, min(max_scale, min_tile // h))
    return min(h, max_tile)


def _fit(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> str:
    """``text`` cut (with '...') to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_grid(images: torch.Tensor, path: str, prompts: list[str] | None = None, title: str | None = None,
              max_scale: int = 3, pad: int = 2, max_tile: int = MAX_TILE) -> tuple[int, int]:
    """images (rows, cols, 3, H, W) in [0, 1] -> a PNG grid; returns its (width, height).

    Each tile is ``tile_side(H)`` wide: small images are upscaled (nearest, at most ``max_scale``), large ones
    downscaled to ``max_tile``. ``title`` (e.g. the iteration) is a header line; ``prompts`` (one per row) is a
    text line above each row, cut to the grid's width.
    """
    r, c, _, h, w = images.shape
    side = tile_side(max(h, w), max_scale, max_tile=max_tile)
    th, tw = round(h * side / max(h, w)), round(w * side / max(h, w))
    font = ImageFont.load_default()
    line = 14 if (prompts or title) else 0
    width = c * (tw + pad) + pad
    head = line + pad if title else 0
    row_h = th + pad + (line if prompts else 0)
    canvas = Image.new("RGB", (width, head + r * row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), _fit(title, font, width - 2 * pad, draw), fill=(0, 0, 0), font=font)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    for i in range(r):
        y = head + pad + i * row_h
        if prompts:
            draw.text((pad, y), _fit(str(prompts[i]), font, width - 2 * pad, draw), fill=(0, 0, 0), font=font)
            y += line
        for j in range(c):
            tile = Image.fromarray(np.ascontiguousarray(arr[i, j]))
            if (th, tw) != (h, w):
                tile = tile.resize((tw, th), Image.NEAREST if th > h else Image.LANCZOS)
            canvas.paste(tile, (pad + j * (tw + pad), y))
    canvas.save(path)
    return canvas.size


def read_grid_tile(path: str, row: int, col: int, h: int, w: int, prompts: bool = True, title: bool = True,
                   max_scale: int = 3, pad: int = 2, max_tile: int = MAX_TILE) -> torch.Tensor:
    """The (3, h', w') tile at (row, col) of a grid written by ``save_grid`` with the same layout arguments, in
    [0, 1] (h', w' = the tile's size in the grid: the image itself when it was neither up- nor downscaled)."""
    side = tile_side(max(h, w), max_scale, max_tile=max_tile)
    th, tw = round(h * side / max(h, w)), round(w * side / max(h, w))
    line = 14 if (prompts or title) else 0
    head = line + pad if title else 0
    row_h = th + pad + (line if prompts else 0)
    y = head + pad + row * row_h + (line if prompts else 0)
    x = pad + col * (tw + pad)
    a = np.asarray(Image.open(path).convert("RGB"))[y : y + th, x : x + tw]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255
