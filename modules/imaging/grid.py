"""Image grids: several generated images pasted into one, as A1111 returns them first.

A1111's default layout (setting `n_rows` = -1) uses floor(sqrt(n)) rows and as many
columns as needed; cells keep the first image's size and empty cells stay black.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image


def grid_shape(count: int, rows: int | None = None) -> tuple[int, int]:
    """(rows, columns) for `count` images; `rows` fixes the row count when given."""
    if count < 1:
        raise ValueError("a grid needs at least one image")
    rows = rows if rows and rows > 0 else max(1, math.isqrt(count))
    rows = min(rows, count)
    return rows, math.ceil(count / rows)


def image_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Paste `images` row by row into one RGB image."""
    rows, columns = grid_shape(len(images), rows)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), color="black")
    for index, image in enumerate(images):
        grid.paste(image, box=(index % columns * width, index // columns * height))
    return grid
