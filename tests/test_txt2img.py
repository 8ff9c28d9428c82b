"""txt2img end to end on a tiny random SD1 checkpoint: files, infotext, seeds, control."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.imaging.save import read_infotext
from modules.infotext import parse_infotext
from modules.jobs import JobQueue
from modules.pipeline.params import ParamsError, Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})


def run(runtime, **fields):
    fields = {"width": 64, "height": 64, "steps": 4, **fields}
    return finish(txt2img(runtime, Txt2ImgParams(**fields)))[0]


def test_images_are_saved_with_parseable_infotext(runtime):
    result = run(runtime, prompt="a red circle", negative_prompt="blue", seed=42,
                 batch_size=2, n_iter=2)
    assert result.seeds == [42, 43, 44, 45]
    assert len(result.images) == 4 and result.images[0].size == (64, 64)
    assert [p.split("/")[-1] for p in result.saved_paths] == [
        "00000-42.png", "00001-43.png", "00002-44.png", "00003-45.png"]
    text = read_infotext(Image.open(result.saved_paths[1]))
    assert text == result.infotexts[1]
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a red circle"
    assert parsed["Negative prompt"] == "blue"
    assert parsed["Seed"] == "43"
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
    assert parsed["Steps"] == "4" and parsed["Size-1"] == "64"
    assert parsed["Model"] == "tiny" and len(parsed["Model hash"]) == 10


def test_same_seed_is_bit_identical_and_batch_equals_singles(runtime):
    batch = run(runtime, prompt="x", seed=7, batch_size=2, sampler_name="Euler a")
    single = run(runtime, prompt="x", seed=8, sampler_name="Euler a")
    again = run(runtime, prompt="x", seed=7, batch_size=2, sampler_name="Euler a")
    # A batch of 2 runs other GEMM / conv blockings than a batch of 1 (~1e-6 apart in
    # float32), which can move a pixel across an 8-bit rounding boundary: equal within 1.
    difference = torch.from_numpy(np.asarray(batch.images[1], dtype=np.int16)
                                  - np.asarray(single.images[0], dtype=np.int16)).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 0.01
    assert batch.images[0].tobytes() == again.images[0].tobytes()
    assert batch.images[0].tobytes() != batch.images[1].tobytes()


def test_prompt_changes_the_image(runtime):
    a = run(runtime, prompt="a red circle", seed=1, do_not_save_samples=True)
    b = run(runtime, prompt="a green square", seed=1, do_not_save_samples=True)
    assert a.images[0].tobytes() != b.images[0].tobytes()


def test_bad_fields_are_named(runtime):
    with pytest.raises(ParamsError, match="width"):
        run(runtime, prompt="x", width=65)
    with pytest.raises(ValueError, match="valid samplers"):
        run(runtime, prompt="x", sampler_name="nope")


def test_interrupt_through_the_queue_returns_partial_result(runtime):
    queue = JobQueue()
    params = Txt2ImgParams(prompt="x", width=64, height=64, steps=30, n_iter=3, seed=3,
                           do_not_save_samples=True)
    job = queue.submit(lambda: txt2img(runtime, params))
    while job.progress is None:
        pass
    queue.interrupt()
    result = job.wait(60)
    queue.stop()
    assert result.interrupted
    assert 1 <= len(result.images) < 3


def test_live_previews_follow_the_setting(runtime):
    params = Txt2ImgParams(prompt="x", width=64, height=64, steps=4, seed=2,
                           do_not_save_samples=True,
                           override_settings={"show_progress_every_n_steps": 2})
    generator = txt2img(runtime, params)
    previews = []
    try:
        while True:
            previews.append(next(generator).preview)
    except StopIteration:
        pass
    assert [p is not None for p in previews] == [False, True, False, True]
    factor = TINY_SD15.vae.downscale
    assert previews[1].size == (64 // factor, 64 // factor) and previews[1].mode == "RGB"
    params.override_settings = {"live_previews_enable": False}
    assert all(event.preview is None for event in _events(txt2img(runtime, params)))


def _events(generator):
    events = []
    try:
        while True:
            events.append(next(generator))
    except StopIteration:
        return events


def test_driving_a_job_does_not_change_the_callers_grad_mode(runtime):
    generator = txt2img(runtime, Txt2ImgParams(prompt="x", width=64, height=64, steps=3,
                                               do_not_save_samples=True))
    next(generator)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    generator.close()
