"""Hires fix with an image upscaler seeds each image's posterior sample with its own seed
(issue #17, item 11), as txt2img seeds each image's noise: image 2 of a batch equals
its seed run alone, and the images of a batch do not share posterior noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.pipeline import hires
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.plan import plan_txt2img
from modules.pipeline.txt2img import txt2img
from tests.helpers.api_runtime import make_runtime
from tests.helpers.checkpoints import finish

BASE = {"prompt": "a house", "width": 64, "height": 64, "steps": 3, "seed": 5,
        "sampler_name": "Euler", "do_not_save_samples": True, "enable_hr": True,
        "denoising_strength": 0.6, "hr_scale": 1.5, "hr_upscaler": "Lanczos"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("hires_seeds"))
    yield rt
    rt.jobs.stop()


def run(runtime, **fields):
    return finish(txt2img(runtime, Txt2ImgParams(**{**BASE, **fields})))[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_same_within_one(a: Image.Image, b: Image.Image) -> None:
    # A batch of 2 runs other GEMM / conv blockings than a batch of 1 (~1e-6 apart in
    # float32), which can move a pixel across an 8-bit rounding boundary: equal within 1.
    difference = np.abs(pixels(a) - pixels(b))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_image_two_of_a_batch_equals_its_seed_alone(runtime):
    batch = run(runtime, batch_size=2)
    alone = run(runtime, seed=6)
    assert batch.seeds == [5, 6] and batch.images[0].size == (96, 96)
    assert_same_within_one(batch.images[1], alone.images[0])


def test_firstpass_image_batch_equals_singles(runtime):
    picture = Image.new("RGB", (64, 64), (40, 90, 200))
    picture.paste((230, 220, 30), (16, 16, 48, 48))
    batch = run(runtime, batch_size=2, firstpass_image=picture)
    alone = run(runtime, seed=6, firstpass_image=picture)
    assert_same_within_one(batch.images[1], alone.images[0])


def test_each_image_of_a_batch_gets_its_own_posterior_noise(runtime):
    plan = plan_txt2img(runtime, Txt2ImgParams(**{**BASE, "batch_size": 2}))
    second = hires.prepare(runtime, plan)
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn((1, 4, 8, 8), generator=generator).repeat(2, 1, 1, 1)
    both = second.upscaled(latent, slice(0, 2))  # one picture, two seeds
    assert not torch.equal(both[0], both[1])
    alone = second.upscaled(latent[1:], slice(1, 2))
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-4)
