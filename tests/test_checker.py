"""The shapes set and the pixel checker: the checker must read the generator's own images."""

import numpy as np
import pytest
from PIL import Image

from modules.training import shapes
from modules.training.checker import analyze_image, check, classify_shape, parse_prompt
from modules.training.shapes import (
    ShapeLabels,
    caption_for,
    evaluation_prompts,
    make_sample,
    render,
)


def test_samples_are_a_pure_function_of_seed_and_index():
    a, b, c = make_sample(3, 7), make_sample(3, 7), make_sample(4, 7)
    assert a.caption == b.caption and np.array_equal(a.image, b.image)
    assert a.caption != c.caption or not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8


def test_caption_grammar():
    labels = ShapeLabels(shape="circle", color="red", background="orange", position="top left",
                         size="small")
    assert caption_for(labels) == "a small red circle at the top left on an orange background"
    centred = ShapeLabels(shape="square", color="orange", background="blue", position="center")
    assert caption_for(centred) == "an orange square in the center on a blue background"


def test_background_never_equals_shape_colour_and_bar_is_held_out():
    for i in range(300):
        truth = make_sample(0, i).truth
        assert truth.background != truth.color
        assert truth.shape in shapes.SHAPES
    assert "bar" not in shapes.SHAPES


@pytest.mark.parametrize("prompt", [make_sample(1, i).caption for i in range(40)])
def test_parse_prompt_inverts_the_caption_grammar(prompt):
    sample = next(make_sample(1, i) for i in range(40) if make_sample(1, i).caption == prompt)
    assert parse_prompt(prompt) == sample.labels


def test_parse_prompt_rejects_other_prompts():
    with pytest.raises(ValueError, match="background"):
        parse_prompt("a photo of a cat")
    with pytest.raises(ValueError, match="shape"):
        parse_prompt("a red dog on a blue background")


def test_checker_reads_every_attribute_of_generated_images():
    wrong = []
    for i in range(300):
        sample = make_sample(11, i)
        result = check(caption_for(sample.truth), sample.image)
        if not result.all_correct:
            wrong.append((sample.truth, result.found))
    assert wrong == []


def test_checker_reports_mismatches():
    truth = ShapeLabels(shape="triangle", color="red", background="blue", position="top right",
                        size="large")
    image = render(truth, resolution=64)
    result = check("a small green circle at the bottom left on a yellow background", image)
    assert result.found == truth
    assert (result.color, result.background, result.shape, result.position,
            result.size) == (False,) * 5
    assert not result.all_correct


def test_attributes_the_prompt_omits_are_not_judged():
    truth = ShapeLabels(shape="square", color="white", background="black", position="center",
                        size="small")
    result = check("a white square on a black background", render(truth, resolution=64))
    assert result.position is None and result.size is None and result.all_correct


def test_blank_image_has_no_shape():
    found = analyze_image(np.full((64, 64, 3), 128, dtype=np.uint8))
    assert found.shape == "none"


def test_checker_works_at_other_sizes_and_with_blur():
    truth = ShapeLabels(shape="circle", color="yellow", background="purple",
                        position="bottom right", size="large")
    image = Image.fromarray(render(truth, resolution=64)).resize((512, 512),
                                                                 Image.Resampling.BICUBIC)
    assert analyze_image(image) == truth
    blurred = Image.fromarray(render(truth, resolution=32)).resize((64, 64),
                                                                   Image.Resampling.BILINEAR)
    assert analyze_image(blurred).shape == "circle"


def test_shape_classifier_on_ideal_masks():
    y, x = np.mgrid[-1:1:40j, -1:1:40j]
    assert classify_shape(x**2 + y**2 <= 1) == "circle"
    assert classify_shape(np.ones((30, 30), bool)) == "square"
    assert classify_shape(np.abs(x) <= (y + 1) / 2) == "triangle"


def test_evaluation_prompts_are_fixed_balanced_and_parse():
    prompts = evaluation_prompts(24)
    assert prompts == evaluation_prompts(24) and len(set(prompts)) == 24
    parsed = [parse_prompt(p) for p in prompts]
    assert {p.shape for p in parsed} == set(shapes.SHAPES)
    assert {p.position for p in parsed} == set(shapes.POSITIONS)
    assert all(p.size is not None and p.background != p.color for p in parsed)
