"""Labelled grids for the X/Y/Z plot and Prompt matrix scripts.

A grid of equal cells with one label band above the columns (X values) and one to
the left of the rows (Y values), as A1111 draws its plots (text is centred and
wrapped to the cell, in a smaller font where a word is wider than the cell, so
nothing is cut at a cell's edge). The result is exactly `columns * w + left` by
`rows * h + top` pixels, where `left`/`top` are 0 when that axis has no labels.
Several grids (Z values) are joined side by side under a title band each.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 14
MIN_FONT_SIZE = 8  # below this a label is no longer readable: long words are broken instead
LINE_GAP = 4
PAD = 2  # white kept between a label and its cell's edges


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(text: str, font, width: float, *, break_words: bool) -> list[str] | None:
    """`text` in lines no wider than `width` as `font` draws them, wrapped at spaces;
    a word wider than a line is broken between characters with `break_words`, else
    the answer is None (try a smaller font)."""
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(joined) <= width:
            lines[-1] = joined
            continue
        if font.getlength(word) <= width:
            lines.append(word)
            continue
        if not break_words:
            return None
        piece = ""
        for char in word:
            if piece and font.getlength(piece + char) > width:
                lines.append(piece)
                piece = ""
            piece += char
        lines.append(piece)
    return lines or [""]


def fit_label(text: str, width_px: int, size: int = FONT_SIZE,
              max_height: int | None = None) -> tuple[list[str], int]:
    """The lines and font size that draw `text` inside `width_px` (and `max_height`):
    wrapped at spaces, the font shrunk step by step while a word or the lines do not
    fit, as A1111 does; at the smallest size words are broken between characters."""
    width = max(1, width_px - 2 * PAD)
    for candidate in range(size, MIN_FONT_SIZE - 1, -1):
        lines = _wrap(text, _font(candidate), width, break_words=False)
        if lines is not None and (max_height is None
                                  or len(lines) * (candidate + LINE_GAP) <= max_height):
            return lines, candidate
    smallest = min(size, MIN_FONT_SIZE)
    return _wrap(text, _font(smallest), width, break_words=True) or [""], smallest


def _text_height(lines: list[str], size: int) -> int:
    return len(lines) * (size + LINE_GAP)


def band_height(labels: Sequence[str], cell_width: int, size: int = FONT_SIZE) -> int:
    """The height of a label band above cells `cell_width` wide: room for the tallest."""
    if not labels:
        return 0
    return max(_text_height(*fit_label(text, cell_width, size)) for text in labels) \
        + 2 * LINE_GAP


def draw_centered(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str,
                  size: int = FONT_SIZE) -> None:
    """`text` centred in `box`, fitted to it (see `fit_label`)."""
    left, top, right, bottom = box
    lines, size = fit_label(text, right - left, size, max(1, bottom - top - 2 * LINE_GAP))
    font = _font(size)
    y = top + (bottom - top - _text_height(lines, size)) // 2
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
