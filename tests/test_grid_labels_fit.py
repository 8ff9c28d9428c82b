"""Grid labels stay inside their cells (issue #25 item 1).

A label is drawn alone in the middle column (or row) of a labelled grid; every dark
pixel it leaves must lie inside that column's (row's) box, so nothing is cut at the
edge nor spills over a neighbour. 64 px cells are what the demo model draws.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.imaging.grid_labels import band_height, join_with_titles, labelled_grid

CELL = 64
LONG = ["Sampler: DPM++ 2M", "Sampler: DPM++ 2M SDE Heun", "Checkpoint name: "
        "sd_xl_base_1.0_0.9vae.safetensors [e6bb9ea85b]", "Steps: 20"]


def cells(rows: int, columns: int, size: int = CELL) -> list[list[Image.Image]]:
    return [[Image.new("RGB", (size, size), (40, 160, 40)) for _ in range(columns)]
            for _ in range(rows)]


def ink_columns(region: Image.Image) -> np.ndarray:
    """The x positions of the dark (text) pixels of a label band."""
    dark = np.asarray(region.convert("L")) < 128
    return np.nonzero(dark.any(axis=0))[0]


def ink_rows(region: Image.Image) -> np.ndarray:
    dark = np.asarray(region.convert("L")) < 128
    return np.nonzero(dark.any(axis=1))[0]


@pytest.mark.parametrize("text", LONG)
def test_column_label_stays_inside_its_cell(text):
    grid = labelled_grid(cells(1, 3), x_labels=["", text, ""], y_labels=[])
    top = band_height(["", text, ""], CELL)
    assert top > 0
    xs = ink_columns(grid.crop((0, 0, grid.width, top)))
    assert xs.size, f"{text!r} was not drawn"
    assert xs.min() >= CELL and xs.max() < 2 * CELL, (text, xs.min(), xs.max())


@pytest.mark.parametrize("text", LONG)
def test_last_column_label_is_not_cut_at_the_right_edge(text):
    grid = labelled_grid(cells(1, 2), x_labels=["", text], y_labels=[])
    top = band_height(["", text], CELL)
    xs = ink_columns(grid.crop((0, 0, grid.width, top)))
    # A margin of white on the right: the text ends inside, not at the image edge.
    assert xs.min() >= CELL and xs.max() < grid.width - 1, (text, xs.max(), grid.width)


@pytest.mark.parametrize("text", LONG)
def test_row_label_stays_inside_its_row(text):
    grid = labelled_grid(cells(3, 1), x_labels=[], y_labels=["", text, ""])
    left = grid.width - CELL
    band = grid.crop((0, 0, left, grid.height))
    ys, xs = ink_rows(band), ink_columns(band)
    assert ys.size and xs.size
    assert ys.min() >= CELL and ys.max() < 2 * CELL, (text, ys.min(), ys.max())
    assert xs.min() > 0 and xs.max() < left - 1


def test_z_titles_stay_inside_their_grid():
    grids = [labelled_grid(cells(1, 1), x_labels=["Steps: 2"], y_labels=[]) for _ in range(3)]
    titles = ["", "Checkpoint name: a_long_checkpoint_name.safetensors", ""]
    joined = join_with_titles(grids, titles)
    top = band_height(titles, CELL)
    xs = ink_columns(joined.crop((0, 0, joined.width, top)))
    assert xs.min() >= CELL and xs.max() < 2 * CELL


def test_short_labels_keep_the_normal_size():
    """Shrinking is for what does not fit: a short label is drawn as tall as before."""
    small = labelled_grid(cells(1, 1, 256), x_labels=["Steps: 20"], y_labels=[])
    top = band_height(["Steps: 20"], 256)
    ys = ink_rows(small.crop((0, 0, small.width, top)))
    assert ys.max() - ys.min() >= 9  # a 14 px font's capitals and descenders
