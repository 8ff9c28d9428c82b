"""A procedurally generated, captioned image set: coloured shapes on coloured backgrounds.

The demo model that ships with Easel is trained on this set, so its vocabulary is the
set's vocabulary: one shape (circle, square or triangle) of one colour, at one of five
positions, in one of two sizes, on a flat background of another colour, e.g.
"a small red circle at the top left on a blue background".

Everything is a pure function of a seed, so a training run is reproducible and the
pixel checker (`modules.training.checker`) can use the same geometry to judge images.
Shapes are drawn at 4x and box-filtered down, which gives clean anti-aliased edges.
The "bar" shape (a horizontal rectangle, 2.5 times as wide as it is high) is
deliberately not in the base set: it is held out for concept (embedding / LoRA)
training. A held-out concept must survive the demo autoencoder's 8x8x4 latent: a bar
does (its round trip keeps an aspect ratio of 1.5-2.8), while a five-pointed star came
back as a rounded blob in every round trip, so no embedding could ever draw one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Colour names and their RGB values, chosen far apart from each other.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 225, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
HELD_OUT_SHAPES: tuple[str, ...] = ("bar",)
# A bar's height as a fraction of its width (the extent).
BAR_HEIGHT = 0.4
SIZES: tuple[str, ...] = ("small", "large")

# Position names and the centre of each, as fractions of (width, height).
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}

# Shape extent (diameter / side) as a fraction of the image side, per size word. Even a
# small shape spans about three latent pixels of an 8x-downscaling autoencoder at 64 px,
# enough for its outline (corners, apex) to survive the round trip.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.34, "large": 0.5}

# Random variation around the nominal centre and size, so every caption has many images.
POSITION_JITTER = 0.03
SIZE_JITTER = 0.06
SUPERSAMPLE = 4


@dataclass(frozen=True, kw_only=True)
class ShapeLabels:
    """What a caption says about an image; None where the caption does not say it."""

    shape: str
    color: str
    background: str
    position: str | None = None
    size: str | None = None


@dataclass(frozen=True, kw_only=True)
class ShapeSample:
    """One generated image (H, W, 3) uint8, its caption and the full ground truth."""

    image: np.ndarray
    caption: str
    labels: ShapeLabels
    truth: ShapeLabels


def article(word: str) -> str:
    """'a' or 'an' before `word`."""
    return "an" if word[0] in "aeiou" else "a"


def caption_for(labels: ShapeLabels) -> str:
    """The caption grammar: 'a {size} {color} {shape} at the {position} on a {bg} background'."""
    words = [w for w in (labels.size, labels.color, labels.shape) if w is not None]
    text = f"{article(words[0])} {' '.join(words)}"
    if labels.position == "center":
        text += " in the center"
    elif labels.position is not None:
        text += f" at the {labels.position}"
    return text + f" on {article(labels.background)} {labels.background} background"


def _shape_points(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]]:
    """Polygon vertices (or bounding box corners for a circle) in pixel units."""
    half = extent / 2
    if shape == "circle":
        return [(cx - half, cy - half), (cx + half, cy + half)]
    if shape == "square":
        side = extent * 0.9 / 2
        return [(cx - side, cy - side), (cx + side, cy + side)]
    if shape == "triangle":
        # Upward-pointing, as wide as the extent; its bounding box is centred on (cx, cy).
        height = extent * 0.9
        return [(cx, cy - height / 2), (cx + half, cy + height / 2), (cx - half, cy + height / 2)]
    if shape == "bar":
        return [(cx - half, cy - half * BAR_HEIGHT), (cx + half, cy + half * BAR_HEIGHT)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES + HELD_OUT_SHAPES}")


def render(truth: ShapeLabels, *, resolution: int, offset: tuple[float, float] = (0.0, 0.0),
           scale: float = 1.0) -> np.ndarray:
    """Draw the image that `truth` describes (all fields set), (H, W, 3) uint8.

    :param offset: shift of the shape's centre, in fractions of the image side
    :param scale: multiplier of the nominal shape size
    """
    big = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), PALETTE[truth.background])
    draw = ImageDraw.Draw(canvas)
    fx, fy = POSITIONS[truth.position or "center"]
    cx, cy = (fx + offset[0]) * big, (fy + offset[1]) * big
    extent = SIZE_FRACTIONS[truth.size or "large"] * scale * big
    points = _shape_points(truth.shape, cx, cy, extent)
    fill = PALETTE[truth.color]
    # Circles, squares and bars are boxes; triangles are polygons.
    if truth.shape == "circle":
        draw.ellipse(points, fill=fill)
    elif truth.shape in ("square", "bar"):
        draw.rectangle(points, fill=fill)
    else:
        draw.polygon(points, fill=fill)
    return np.asarray(canvas.resize((resolution, resolution), Image.Resampling.BOX))


def random_truth(rng: np.random.Generator, *, shapes: tuple[str, ...] = SHAPES) -> ShapeLabels:
    """Draw every attribute uniformly; the background colour differs from the shape's."""
    color = COLORS[rng.integers(len(COLORS))]
    backgrounds = [c for c in COLORS if c != color]
    return ShapeLabels(
        shape=shapes[rng.integers(len(shapes))],
        color=color,
        background=backgrounds[rng.integers(len(backgrounds))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
        size=SIZES[rng.integers(len(SIZES))],
    )


def caption_labels(truth: ShapeLabels, rng: np.random.Generator, *,
                   omit_probability: float) -> ShapeLabels:
    """The labels a caption mentions: size and position are each left out sometimes."""
    omit_size, omit_position = rng.random(2) < omit_probability
    return ShapeLabels(
        shape=truth.shape,
        color=truth.color,
        background=truth.background,
        position=None if omit_position else truth.position,
        size=None if omit_size else truth.size,
    )


def make_sample(seed: int, index: int, *, resolution: int = 64, omit_probability: float = 0.15,
                shapes: tuple[str, ...] = SHAPES) -> ShapeSample:
    """Sample number `index` of the set with this `seed` (a pure function of both)."""
    rng = np.random.default_rng([seed, index])
    truth = random_truth(rng, shapes=shapes)
    offset = tuple(rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2))
    scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    image = render(truth, resolution=resolution, offset=offset, scale=scale)
    labels = caption_labels(truth, rng, omit_probability=omit_probability)
    return ShapeSample(image=image, caption=caption_for(labels), labels=labels, truth=truth)


def make_batch(seed: int, start: int, count: int, *, resolution: int = 64,
               omit_probability: float = 0.15) -> tuple[np.ndarray, list[str]]:
    """Samples start .. start + count - 1 as (count, H, W, 3) uint8 images and captions."""
    samples = [make_sample(seed, start + i, resolution=resolution,
                           omit_probability=omit_probability)
               for i in range(count)]
    return np.stack([s.image for s in samples]), [s.caption for s in samples]


def make_caption_group(seed: int, group: int, count: int, *, resolution: int = 64,
                       omit_probability: float = 0.15) -> tuple[np.ndarray, str]:
    """`count` images of one caption (same attributes, own jitter): (count, H, W, 3), caption.

    Training batches hold a few images per caption, so that the text encoder runs once
    for several U-Net samples.
    """
    rng = np.random.default_rng([seed, group])
    truth = random_truth(rng)
    caption = caption_for(caption_labels(truth, rng, omit_probability=omit_probability))
    images = []
    for i in range(count):
        jitter = np.random.default_rng([seed, group, i])
        offset = tuple(jitter.uniform(-POSITION_JITTER, POSITION_JITTER, size=2))
        scale = 1.0 + jitter.uniform(-SIZE_JITTER, SIZE_JITTER)
        images.append(render(truth, resolution=resolution, offset=offset, scale=scale))
    return np.stack(images), caption


def evaluation_prompts(count: int = 24, *, seed: int = 1234) -> list[str]:
    """A fixed, balanced list of full captions (every attribute named) for evaluation.

    Shapes, positions and sizes cycle so each appears about equally often; colours are
    drawn from a seeded generator.
    """
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(count):
        color = COLORS[rng.integers(len(COLORS))]
        background = [c for c in COLORS if c != color][rng.integers(len(COLORS) - 1)]
        labels = ShapeLabels(
            shape=SHAPES[i % len(SHAPES)],
            color=color,
            background=background,
            position=list(POSITIONS)[i % len(POSITIONS)],
            size=SIZES[(i // len(SHAPES)) % len(SIZES)],
        )
        prompts.append(caption_for(labels))
    return prompts
