"""`/controlnet/render_openpose_json`: OpenPose keypoint JSON -> the pose picture.

The input is the OpenPose JSON of the ControlNet extension (one object per picture:
`people` with `pose_keypoints_2d`, `hand_left_keypoints_2d`, `hand_right_keypoints_2d`,
`face_keypoints_2d` as flat x, y, confidence triples, and `canvas_width`,
`canvas_height`); a point whose confidence is below 1 is absent. Coordinates are
fractions of the canvas; a person with any coordinate above 1 is read in pixels.

The picture follows the OpenPose convention the ControlNet openpose models were
trained on (our drawing code, their published colours and joint pairs): on black, the
17 limbs of the 18-point COCO body as ellipses 8 pixels wide in their colours, the
whole dimmed to 60 %, then the joints as dots of radius 4; hand bones as 2-pixel lines
coloured around the hue circle with blue joint dots; face points as white dots of
radius 3.

Bounded work: canvases up to 2048 a side, 16 people a picture, 8 pictures a request
(more is a 422 naming the field); the largest picture takes about 1.5 s here.
"""

from __future__ import annotations

import base64
import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, Field

# Bounds on one request's work (docs/security.md): about 1.5 s per picture at the largest.
MAX_SIDE = 2048
MAX_PEOPLE = 16
MAX_PICTURES = 8
MAX_NUMBERS = 3 * 70  # the face's 70 points, the longest list

# 1-based joint pairs of the 18-point body, and the colour of each limb and joint.
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12),
         (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
           (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
           (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
           (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_BONES = tuple((0 if i % 4 == 0 else i, i + 1) for i in range(20))
Keypoints = list[float] | None


class Person(BaseModel):
    pose_keypoints_2d: list[float] = Field(max_length=MAX_NUMBERS)
    hand_right_keypoints_2d: Keypoints = Field(default=None, max_length=MAX_NUMBERS)
    hand_left_keypoints_2d: Keypoints = Field(default=None, max_length=MAX_NUMBERS)
    face_keypoints_2d: Keypoints = Field(default=None, max_length=MAX_NUMBERS)


class PoseData(BaseModel):
    people: list[Person] = Field(max_length=MAX_PEOPLE)
    canvas_width: int = Field(ge=1, le=MAX_SIDE)
    canvas_height: int = Field(ge=1, le=MAX_SIDE)


Point = tuple[float, float] | None


def points(numbers: Keypoints, field: str, scale: tuple[float, float]) -> list[Point]:
    """Flat x, y, confidence triples -> pixel points (None where confidence < 1)."""
    if not numbers:
        return []
    if len(numbers) % 3:
        raise ValueError(f"{field}: {len(numbers)} numbers, not x, y, confidence triples")
    triples = [numbers[i:i + 3] for i in range(0, len(numbers), 3)]
    return [(x * scale[0], y * scale[1]) if c >= 1 else None for x, y, c in triples]


def _limb(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float],
          colour) -> None:
    """An ellipse from a to b, 4 pixels in half-width, as a filled polygon."""
    (x1, y1), (x2, y2) = a, b
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, math.hypot(x2 - x1, y2 - y1) / 2
    angle = math.atan2(y2 - y1, x2 - x1)
    cos, sin = math.cos(angle), math.sin(angle)
    outline = []
    for step in range(0, 360, 10):
        u, v = half * math.cos(math.radians(step)), 4 * math.sin(math.radians(step))
        outline.append((cx + u * cos - v * sin, cy + u * sin + v * cos))
    draw.polygon(outline, fill=colour)


def _dot(draw: ImageDraw.ImageDraw, point: tuple[float, float], radius: int, colour) -> None:
    x, y = int(point[0]), int(point[1])
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)


def _body(canvas: Image.Image, body: list[Point]) -> Image.Image:
    draw = ImageDraw.Draw(canvas)
    for (i, j), colour in zip(LIMBS, COLOURS):
        if max(i, j) <= len(body) and body[i - 1] and body[j - 1]:
            _limb(draw, body[i - 1], body[j - 1], colour)
    canvas = Image.fromarray((np.asarray(canvas) * 0.6).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for point, colour in zip(body, COLOURS):
        if point:
            _dot(draw, point, 4, colour)
    return canvas


def _shown(point: Point) -> bool:
    """Hand and face points at the canvas's top or left edge mean "not found"."""
    return point is not None and point[0] > 0.01 and point[1] > 0.01


def _hand(draw: ImageDraw.ImageDraw, hand: list[Point]) -> None:
    for index, (i, j) in enumerate(HAND_BONES):
        if j < len(hand) and _shown(hand[i]) and _shown(hand[j]):
            hue = colorsys.hsv_to_rgb(index / len(HAND_BONES), 1.0, 1.0)
            draw.line([tuple(map(int, hand[i])), tuple(map(int, hand[j]))], width=2,
                      fill=tuple(int(c * 255) for c in hue))
    for point in hand:
        if _shown(point):
            _dot(draw, point, 4, (0, 0, 255))


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; pose pictures stay small
    return base64.b64encode(buffer.getvalue()).decode()


def render(pose: PoseData) -> Image.Image:
    """One picture of every person in `pose`."""
    canvas = Image.new("RGB", (pose.canvas_width, pose.canvas_height))
    for index, person in enumerate(pose.people):
        lists = {name: getattr(person, name) or [] for name in Person.model_fields}
        coordinates = [v for numbers in lists.values() for k, v in enumerate(numbers) if k % 3 < 2]
        pixels = any(v > 1 for v in coordinates)
        scale = (1.0, 1.0) if pixels else (pose.canvas_width, pose.canvas_height)
        found = {name: points(numbers, f"people[{index}].{name}", scale)
                 for name, numbers in lists.items()}
        canvas = _body(canvas, found["pose_keypoints_2d"])
        draw = ImageDraw.Draw(canvas)
        _hand(draw, found["hand_left_keypoints_2d"])
        _hand(draw, found["hand_right_keypoints_2d"])
        for point in found["face_keypoints_2d"]:
            if _shown(point):
                _dot(draw, point, 3, (255, 255, 255))
    return canvas
