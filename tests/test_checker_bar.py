"""The pixel checker recognises the held-out bar, and never mistakes the base shapes for one."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from modules.training.checker import BAR_ASPECT, analyze_image, check, classify_shape, parse_prompt
from modules.training.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeLabels,
    make_sample,
    render,
)

OFFSETS = ((0.0, 0.0), (0.03, -0.03), (-0.03, 0.03))
SCALES = (0.94, 1.06)


def _every_placement(shape: str):
    """`shape` at every size and position, with the set's extremes of jitter and scale."""
    for index, (size, position) in enumerate((s, p) for s in SIZES for p in POSITIONS):
        color = COLORS[index % len(COLORS)]
        background = COLORS[(index + 3) % len(COLORS)]
        truth = ShapeLabels(shape=shape, color=color, background=background, position=position,
                            size=size)
        for offset in OFFSETS:
            for scale in SCALES:
                yield truth, render(truth, resolution=64, offset=offset, scale=scale)


@pytest.mark.parametrize("shape", ("bar",) + SHAPES)
def test_every_placement_of_every_shape_is_named_right(shape):
    found = [(truth, analyze_image(image)) for truth, image in _every_placement(shape)]
    wrong = [(t, f) for t, f in found if t != f]
    assert wrong == []


@pytest.mark.parametrize("shape", ("bar",) + SHAPES)
def test_shape_survives_a_one_pixel_blur(shape):
    named = [analyze_image(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0))).shape
             for _, image in _every_placement(shape)]
    assert set(named) == {shape}


def test_bar_is_found_at_other_resolutions():
    truth = ShapeLabels(shape="bar", color="yellow", background="black", position="top right",
                        size="large")
    assert analyze_image(Image.fromarray(render(truth, resolution=256))).shape == "bar"
    upscaled = Image.fromarray(render(truth, resolution=64)).resize((512, 512))
    assert analyze_image(upscaled).shape == "bar"


def test_random_bar_samples_check_out():
    for index in range(60):
        sample = make_sample(21, index, shapes=("bar",))
        assert check(f"a {sample.truth.color} bar on a {sample.truth.background} background",
                     sample.image).shape, sample.truth


def test_bar_prompts_parse_and_a_square_is_not_a_bar():
    assert parse_prompt("a small red bar at the top left on a blue background").shape == "bar"
    square = render(ShapeLabels(shape="square", color="red", background="blue", position="center",
                                size="small"), resolution=64)
    result = check("a small red bar in the center on a blue background", square)
    assert result.shape is False and result.found.shape == "square"


def test_aspect_cut_of_ideal_masks():
    assert classify_shape(np.ones((10, 25), bool)) == "bar"
    assert classify_shape(np.ones((10, int(10 * BAR_ASPECT) - 1), bool)) == "square"
    assert classify_shape(np.ones((25, 10), bool)) != "bar"  # an upright column is not a bar
