"""Overlapping tiles of a picture at the job's size, and feathered blending back.

SD upscale and Poor man's outpainting run img2img on pieces of a picture larger than
the job's width x height. `TileGrid` places tiles of exactly that size so that
neighbours overlap by at least `overlap` pixels, spread evenly from edge to edge
(the first at 0, the last flush with the far edge), as A1111's scripts do.

`merge` puts processed tiles back as a weighted average: each tile's weight ramps
linearly from ~0 to 1 over `overlap` pixels on every side that has a neighbour, so
seams fade out. Where all tiles agree (the untouched original) the average is that
value, so kept pixels come back exactly.

Unlike A1111 (which pads with black), a picture smaller than a tile is padded by
repeating its edge pixels up to the tile size, and the padding is cropped off again
after merging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: evenly spread, overlapping by at least `overlap`."""
    if tile <= overlap:
        raise ValueError(f"overlap {overlap} must be smaller than the tile size {tile}")
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    count = max(count, 2)
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _ramp(length: int, overlap: int, start: bool, end: bool) -> np.ndarray:
    """Weights along one axis of a tile: linear ramps on the sides with neighbours."""
    weights = np.ones(length, dtype=np.float64)
    if overlap <= 0:
        return weights
    ramp = np.linspace(0.0, 1.0, overlap + 2)[1:-1]
    if start:
        weights[:overlap] = np.minimum(weights[:overlap], ramp)
    if end:
        weights[-overlap:] = np.minimum(weights[-overlap:], ramp[::-1])
    return weights


@dataclass(frozen=True)
class Tile:
    """One tile's top-left corner on the (padded) canvas."""

    x: int
    y: int


@dataclass(frozen=True)
class TileGrid:
    """Tiles of `tile_w` x `tile_h` covering a `width` x `height` picture."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    overlap: int

    @property
    def canvas(self) -> tuple[int, int]:
        """The picture's size, grown to at least one tile (padding is edge pixels)."""
        return max(self.width, self.tile_w), max(self.height, self.tile_h)

    def tiles(self) -> list[Tile]:
        """Row by row, left to right."""
        canvas_w, canvas_h = self.canvas
        xs = tile_starts(canvas_w, self.tile_w, self.overlap)
        ys = tile_starts(canvas_h, self.tile_h, self.overlap)
        return [Tile(x, y) for y in ys for x in xs]

    def box(self, tile: Tile) -> tuple[int, int, int, int]:
        return tile.x, tile.y, tile.x + self.tile_w, tile.y + self.tile_h

    def pad(self, image: Image.Image) -> Image.Image:
        """`image` on the canvas, its edge pixels repeated into the padding."""
        if image.size != (self.width, self.height):
            raise ValueError(f"expected a {self.width}x{self.height} image, got "
                             f"{image.width}x{image.height}")
        canvas_w, canvas_h = self.canvas
        if (canvas_w, canvas_h) == image.size:
            return image
        array = np.asarray(image)
        pad = [(0, canvas_h - self.height), (0, canvas_w - self.width)]
        pad += [(0, 0)] * (array.ndim - 2)
        return Image.fromarray(np.pad(array, pad, mode="edge"), mode=image.mode)

    def split(self, image: Image.Image) -> list[Image.Image]:
        padded = self.pad(image)
        return [padded.crop(self.box(tile)) for tile in self.tiles()]

    def merge(self, images: list[Image.Image]) -> Image.Image:
        """Processed tiles (in `tiles()` order) blended into one RGB picture."""
        tiles = self.tiles()
        if len(images) != len(tiles):
            raise ValueError(f"expected {len(tiles)} tiles, got {len(images)}")
        canvas_w, canvas_h = self.canvas
        total = np.zeros((canvas_h, canvas_w, 3), dtype=np.float64)
        weights = np.zeros((canvas_h, canvas_w, 1), dtype=np.float64)
        for tile, image in zip(tiles, images):
            if image.size != (self.tile_w, self.tile_h):
                image = image.resize((self.tile_w, self.tile_h), Image.Resampling.LANCZOS)
            weight = self.weight(tile)[..., None]
            rows = slice(tile.y, tile.y + self.tile_h)
            cols = slice(tile.x, tile.x + self.tile_w)
            total[rows, cols] += np.asarray(image.convert("RGB"), dtype=np.float64) * weight
            weights[rows, cols] += weight
        merged = np.clip(np.rint(total / weights), 0, 255).astype(np.uint8)
        return Image.fromarray(merged[:self.height, :self.width], mode="RGB")

    def weight(self, tile: Tile) -> np.ndarray:
        canvas_w, canvas_h = self.canvas
        along_x = _ramp(self.tile_w, self.overlap, tile.x > 0, tile.x + self.tile_w < canvas_w)
        along_y = _ramp(self.tile_h, self.overlap, tile.y > 0, tile.y + self.tile_h < canvas_h)
        return along_y[:, None] * along_x[None, :]
