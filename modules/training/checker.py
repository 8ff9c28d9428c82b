"""A pixel checker for images of the shapes set: does the image show what the prompt says?

It never calls a model. It reads a prompt of the `modules.training.shapes` family into
labels, then measures the image with plain array arithmetic:

* background colour: the median of the border pixels, named by the nearest palette colour;
* shape mask: pixels far from the background (half-way to the farthest ones), keeping
  the largest 4-connected component so stray specks do not count;
* shape colour: the median of the mask's core pixels, nearest palette colour;
* position: the mask's centroid, nearest of the five nominal centres;
* size: the bounding box's larger side, small or large by the midpoint of the two;
* shape type: the held-out bar is the only elongated shape (its bounding box is 2.5
  times as wide as high, the others' at most 1.1 times), so a wide box names it;
  an upward triangle is narrow at the top and wide at the bottom (a width profile
  ratio); of the symmetric ones a square fills the corners of its bounding box and a
  circle leaves them empty.

Tests use it to check that prompts, samplers, LoRAs... change the pixels as they should.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from modules.training.shapes import (
    COLORS,
    HELD_OUT_SHAPES,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZE_FRACTIONS,
    SIZES,
    ShapeLabels,
)

ANALYSIS_RESOLUTION = 64
MIN_SHAPE_DISTANCE = 40.0  # RGB distance below which nothing stands out from the background
# Shape thresholds. Ideal shapes score: top/bottom width ratio, triangle 0.14, circle
# and square 1; corner fill, circle 0.31, square 1. Blur (an autoencoder's, a sampler's)
# moves a triangle's ratio and a square's corners towards the circle's values while a
# circle barely changes, so the cuts sit nearer the circle.
TRIANGLE_WIDTH_RATIO = 0.65
SQUARE_CORNER_FILL = 0.5
# Width / height of the bounding box: bar 2.5 drawn, 1.5-2.8 after the demo autoencoder's
# round trip; triangle 1.1, circle and square 1. The cut sits between.
BAR_ASPECT = 1.4
ALL_SHAPES = SHAPES + HELD_OUT_SHAPES


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """Per attribute: True/False when the prompt names it, None when it does not."""

    expected: ShapeLabels
    found: ShapeLabels
    color: bool | None
    background: bool | None
    shape: bool | None
    position: bool | None
    size: bool | None

    @property
    def all_correct(self) -> bool:
        return all(v is not False for v in (self.color, self.background, self.shape, self.position,
                                            self.size))


def parse_prompt(prompt: str) -> ShapeLabels:
    """Labels named by a prompt of the shapes family; raises ValueError when it is not one."""
    text = " " + " ".join(prompt.lower().replace(",", " ").split()) + " "
    head, _, tail = text.partition(" background")
    if " on " not in head:
        raise ValueError(f"prompt {prompt!r} names no background ('on a ... background')")
    subject, _, background_part = head.rpartition(" on ")
    subject, background_part = subject + " ", background_part + " "
    background = _find_one(background_part, COLORS)
    shape = _find_one(subject, ALL_SHAPES)
    color = _find_one(subject, COLORS)
    if shape is None or color is None or background is None:
        raise ValueError(f"prompt {prompt!r} lacks a shape, a shape colour or a background colour")
    position = next((p for p in sorted(POSITIONS, key=len, reverse=True) if f" {p} " in subject),
                    None)
    return ShapeLabels(shape=shape, color=color, background=background, position=position,
                       size=_find_one(subject, SIZES))


def _find_one(text: str, words: tuple[str, ...] | list[str]) -> str | None:
    """The first of `words` that occurs as a whole word in `text` (by position)."""
    hits = [(text.find(f" {w} "), w) for w in words if f" {w} " in text]
    return min(hits)[1] if hits else None


def nearest_color(rgb: np.ndarray) -> str:
    """The palette name closest to an RGB triple."""
    distances = {name: float(np.linalg.norm(rgb - np.array(value)))
                 for name, value in PALETTE.items()}
    return min(distances, key=distances.get)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any RGB image -> (64, 64, 3) float array in 0..255."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (ANALYSIS_RESOLUTION, ANALYSIS_RESOLUTION):
        image = image.resize((ANALYSIS_RESOLUTION, ANALYSIS_RESOLUTION), Image.Resampling.BOX)
    return np.asarray(image).astype(np.float64)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (breadth-first flood fill)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, next_label = 0, 0, 1
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        labels[start] = next_label
        queue, size = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = next_label
                    queue.append((ny, nx))
        if size > best_size:
            best_label, best_size = next_label, size
        next_label += 1
    return labels == best_label if best_size else mask


def classify_shape(mask: np.ndarray) -> str:
    """Bar, circle, square or triangle from a boolean mask cropped to its bounding box."""
    height, width = mask.shape
    if width >= BAR_ASPECT * height:
        return "bar"
    band = max(1, height // 4)
    top_width = mask[:band].sum(axis=1).mean()
    bottom_width = mask[-band:].sum(axis=1).mean()
    # An upward (or downward) triangle is much narrower at one end than the other.
    ratio = min(top_width, bottom_width) / max(top_width, bottom_width, 1e-6)
    if ratio < TRIANGLE_WIDTH_RATIO:
        return "triangle"
    # A square fills its bounding box's corners; a circle leaves them empty.
    ch, cw = max(1, height // 4), max(1, width // 4)
    corners = [mask[:ch, :cw], mask[:ch, -cw:], mask[-ch:, :cw], mask[-ch:, -cw:]]
    corner_fill = float(np.mean([c.mean() for c in corners]))
    return "square" if corner_fill > SQUARE_CORNER_FILL else "circle"


def _nearest_position(cx: float, cy: float) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)


def analyze_image(image: Image.Image | np.ndarray) -> ShapeLabels:
    """Measure every attribute of an image; shape is "none" when nothing stands out."""
    pixels = _as_array(image)
    side = pixels.shape[0]
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    background = nearest_color(background_rgb)
    distance = np.linalg.norm(pixels - background_rgb, axis=-1)
    far = float(np.percentile(distance, 99))
    if far < MIN_SHAPE_DISTANCE:
        return ShapeLabels(shape="none", color="none", background=background)
    # The shape: pixels at least half-way to the farthest ones, largest connected region.
    mask = _largest_component(distance > far / 2)
    core = mask & (distance > far * 0.75)
    color = nearest_color(np.median(pixels[core if core.any() else mask], axis=0))
    ys, xs = np.nonzero(mask)
    position = _nearest_position((xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    extent = max(crop.shape) / side
    size = "small" if extent < (SIZE_FRACTIONS["small"] + SIZE_FRACTIONS["large"]) / 2 else "large"
    return ShapeLabels(shape=classify_shape(crop), color=color, background=background,
                       position=position, size=size)


def check(prompt: str, image: Image.Image | np.ndarray) -> CheckResult:
    """Compare what `prompt` asks for with what `image` shows, attribute by attribute."""
    expected = parse_prompt(prompt)
    found = analyze_image(image)
    verdicts = {}
    for name in ("color", "background", "shape", "position", "size"):
        want = getattr(expected, name)
        verdicts[name] = None if want is None else want == getattr(found, name)
    return CheckResult(expected=expected, found=found, **verdicts)


def attribute_names() -> tuple[str, ...]:
    """The attributes a `CheckResult` reports, in order."""
    return tuple(f.name for f in fields(CheckResult) if f.name not in ("expected", "found"))
