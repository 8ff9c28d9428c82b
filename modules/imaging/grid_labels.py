"""Labelled grids for the X/Y/Z plot and Prompt matrix scripts.

A grid of equal cells with one label band above the columns (X values) and one to
the left of the rows (Y values), as A1111 draws its plots (text is centred and
wrapped to the cell). The result is exactly `columns * w + left` by
`rows * h + top` pixels, where `left`/`top` are 0 when that axis has no labels.
Several grids (Z values) are joined side by side under a title band each.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 14
LINE_GAP = 4


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _lines(text: str, width_px: int, size: int) -> list[str]:
    chars = max(4, width_px // max(1, size // 2 + 1))
    return textwrap.wrap(text, chars) or [""]


def band_height(labels: Sequence[str], cell_width: int, size: int = FONT_SIZE) -> int:
    rows = max((len(_lines(text, cell_width, size)) for text in labels), default=0)
    return rows * (size + LINE_GAP) + 2 * LINE_GAP if labels else 0


def draw_centered(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str,
                  size: int = FONT_SIZE) -> None:
    left, top, right, bottom = box
    lines = _lines(text, right - left, size)
    font = _font(size)
    y = top + (bottom - top - len(lines) * (size + LINE_GAP)) // 2
    for line in lines:
        width = draw.textlength(line, font=font)
        draw.text((left + (right - left - width) / 2, y), line, fill="black", font=font)
        y += size + LINE_GAP


def labelled_grid(cells: Sequence[Sequence[Image.Image]], *, x_labels: Sequence[str],
                  y_labels: Sequence[str], margin: int = 0) -> Image.Image:
    """`cells[row][column]` pasted on white with the X labels on top and Y labels left."""
    rows, columns = len(cells), len(cells[0])
    width, height = cells[0][0].size
    top = band_height(x_labels, width)
    left = max(width // 2, 96) if y_labels else 0
    grid = Image.new("RGB", (left + columns * width + (columns - 1) * margin,
                             top + rows * height + (rows - 1) * margin), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((width, height)),
                       (left + c * (width + margin), top + r * (height + margin)))
    for c, text in enumerate(x_labels):
        x = left + c * (width + margin)
        draw_centered(draw, (x, 0, x + width, top), text)
    for r, text in enumerate(y_labels):
        y = top + r * (height + margin)
        draw_centered(draw, (0, y, left, y + height), text)
    return grid


def join_with_titles(grids: Sequence[Image.Image], titles: Sequence[str],
                     margin: int = 0) -> Image.Image:
    """Grids side by side, each under its title (the Z axis)."""
    top = band_height(titles, min(g.width for g in grids))
    width = sum(g.width for g in grids) + margin * (len(grids) - 1)
    joined = Image.new("RGB", (width, top + max(g.height for g in grids)), "white")
    draw, x = ImageDraw.Draw(joined), 0
    for grid, title in zip(grids, titles):
        joined.paste(grid, (x, top))
        draw_centered(draw, (x, 0, x + grid.width, top), title)
        x += grid.width + margin
    return joined
