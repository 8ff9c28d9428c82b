"""The shipped demo checkpoint: an ordinary SD1 file to the loader, and it draws its prompts."""

from pathlib import Path

import pytest

from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.loader import inspect_checkpoint
from modules.training.checker import check
from modules.training.demo_config import ARCHITECTURE, META_FAMILY, META_RESOLUTION, META_TITLE
from modules.training.evaluate import generate, load_model

CHECKPOINT = (Path(__file__).resolve().parent.parent / "models" / "Stable-diffusion"
              / "easel-demo.safetensors")

# A few prompts the demo must get right (a subset of the kind the evaluation uses).
PROMPTS = [
    "a large red circle at the top left on a blue background",
    "a large yellow square at the bottom right on a black background",
    "a large white triangle in the center on a green background",
    "a large blue circle at the bottom left on a yellow background",
]


@pytest.fixture(scope="module")
def demo():
    return load_model(CHECKPOINT)


def test_checkpoint_is_small_and_declares_itself():
    assert CHECKPOINT.stat().st_size <= 30 * 1024 * 1024
    header, family = inspect_checkpoint(CHECKPOINT)
    assert header.metadata["modelspec.architecture"] == ARCHITECTURE
    assert header.metadata[META_RESOLUTION] == "64x64"
    assert header.metadata[META_TITLE] and META_FAMILY in header.metadata
    assert family.native_resolution == 64 and family.prediction == "eps" and not family.is_sdxl
    assert family.text_encoders[0].prefix == "cond_stage_model.transformer."
    prefixes = {k.split(".")[0] for k in header.tensors}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert {info.dtype for info in header.tensors.values()} == {"F16"}


def test_demo_draws_colours_and_backgrounds(demo):
    tokenizer = ClipTokenizer()
    images = generate(demo, PROMPTS, [0] * len(PROMPTS), tokenizer=tokenizer)
    results = [check(p, im) for p, im in zip(PROMPTS, images)]
    assert images.shape == (len(PROMPTS), 64, 64, 3)
    assert sum(r.background and r.color for r in results) >= len(PROMPTS) - 1
    assert sum(bool(r.shape) for r in results) >= len(PROMPTS) - 2


def test_demo_places_the_shape_where_asked(demo):
    prompts = [f"a large red circle {where} on a white background"
               for where in ("at the top left", "at the top right", "at the bottom left",
                             "at the bottom right")]
    images = generate(demo, prompts, [0, 1, 2, 3], tokenizer=ClipTokenizer())
    assert sum(bool(check(p, im).position) for p, im in zip(prompts, images)) >= 3


def test_prompt_changes_the_picture(demo):
    tokenizer = ClipTokenizer()
    red, green = generate(demo, ["a large red square in the center on a white background",
                                 "a large green square in the center on a white background"],
                          [3, 3], tokenizer=tokenizer)
    assert check("a large red square in the center on a white background", red).color
    assert check("a large green square in the center on a white background", green).color
