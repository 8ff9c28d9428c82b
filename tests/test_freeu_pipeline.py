"""FreeU and Kohya Deep Shrink end to end: txt2img through `alwayson_scripts` on tiny SD1.

Off means off (disabled, or at the neutral setting: bit-identical image), on changes
the image and writes Forge's infotext keys, hires fix works with both, and the loaded
model's parameters are unchanged by a job with both on.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.api_runtime import make_runtime, png_base64
from tests.helpers.checkpoints import finish
from tests.helpers.controlnet import write_tiny_controlnet
from tests.tiny import TINY_SD15

FREEU = "FreeU Integrated (SD 1.x, SD 2.x, SDXL)"
SHRINK = "Kohya HRFix Integrated"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("freeu")
    write_tiny_controlnet(data / "models" / "ControlNet" / "control_tiny.safetensors",
                          TINY_SD15.unet, scale=0.2)
    rt = make_runtime(data)
    yield rt
    rt.jobs.stop()


def run(runtime, scripts=None, **fields):
    params = Txt2ImgParams(prompt="a square", seed=5, width=64, height=64, steps=4,
                           sampler_name="Euler", do_not_save_samples=True,
                           alwayson_scripts=scripts or {}, **fields)
    return finish(txt2img(runtime, params))[0]


def pixels(result) -> bytes:
    return result.images[0].tobytes()


def model_hash(runtime) -> str:
    digest = hashlib.sha256()
    for name, tensor in runtime.models.get().model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_freeu_off_and_neutral_are_bit_identical_and_on_changes(runtime):
    plain = pixels(run(runtime))
    assert pixels(run(runtime, {FREEU: {"args": [False, 1.5, 1.5, 0.5, 0.5]}})) == plain
    assert pixels(run(runtime, {FREEU: {"args": [True, 1.0, 1.0, 1.0, 1.0]}})) == plain
    # Tiny SD1 (model_channels 32, multipliers 1, 2): only h of 64 channels is a stage.
    on = run(runtime, {FREEU: {"args": [True, 1.5, 1.6, 0.5, 0.4]}})
    assert pixels(on) != plain and on.warnings == []
    text = on.infotexts[0]
    for key in ("freeu_enabled: True", "freeu_b1: 1.5", "freeu_b2: 1.6", "freeu_s1: 0.5",
                "freeu_s2: 0.4"):
        assert key in text
    assert "freeu_version" not in text and "freeu_start" not in text
    v1 = run(runtime, {FREEU: {"args": [True, 1.5, 1.6, 0.5, 0.4, 0.0, 1.0, "1", "levels"]}})
    assert pixels(v1) not in (plain, pixels(on))
    assert "freeu_version: 1" in v1.infotexts[0] and "freeu_blocks: levels" in v1.infotexts[0]
    # A window past the last step adds nothing.
    late = run(runtime, {FREEU: {"args": [True, 1.5, 1.6, 0.5, 0.4, 0.9, 1.0]}})
    assert pixels(late) == plain


def test_deep_shrink_off_and_neutral_are_bit_identical_and_on_changes(runtime):
    plain = pixels(run(runtime))
    assert pixels(run(runtime, {SHRINK: {"args": [False, 1, 2.0, 0.0, 1.0]}})) == plain
    assert pixels(run(runtime, {SHRINK: {"args": [True, 1, 1.0, 0.0, 1.0]}})) == plain
    on = run(runtime, {SHRINK: {"args": [True, 1, 2.0, 0.0, 0.5]}})
    assert pixels(on) != plain and on.warnings == []
    for key in ("kohya_hrfix_enabled: True", "kohya_hrfix_block_number: 1",
                "kohya_hrfix_downscale_factor: 2.0", "kohya_hrfix_end_percent: 0.5",
                "kohya_hrfix_downscale_after_skip: True",
                "kohya_hrfix_downscale_method: bicubic"):
        assert key in on.infotexts[0]
    other_block = run(runtime, {SHRINK: {"args": [True, 2, 2.0, 0.0, 0.5]}})
    assert pixels(other_block) not in (plain, pixels(on))
    missing = run(runtime, {SHRINK: {"args": [True, 9, 2.0, 0.0, 0.5]}})
    assert pixels(missing) == plain and "block_number 9" in missing.warnings[0]
    assert "kohya_hrfix" not in missing.infotexts[0]


def test_both_with_hires_fix_leave_the_model_unchanged(runtime):
    before = model_hash(runtime)
    scripts = {FREEU: {"args": [True, 1.5, 1.6, 0.5, 0.4]},
               SHRINK: {"args": [True, 1, 2.0, 0.0, 0.5]}}
    hires = dict(enable_hr=True, denoising_strength=0.5, hr_scale=1.5)
    plain = run(runtime, **hires)
    both = run(runtime, scripts, **hires)
    assert both.images[0].size == (96, 96) and both.warnings == []
    assert pixels(both) != pixels(plain)
    assert model_hash(runtime) == before
    assert pixels(run(runtime, **hires)) == pixels(plain)  # the next plain job is untouched


def test_deep_shrink_and_freeu_compose_with_controlnet(runtime):
    """ControlNet's residuals are resized to the shrunk maps (before and after the skip)."""
    square = np.zeros((64, 64, 3), dtype=np.uint8)
    square[16:48, 16:48] = 255
    unit = {"enabled": True, "module": "canny", "model": "control_tiny",
            "image": png_base64(Image.fromarray(square)), "processor_res": 64}
    control = {"controlnet": {"args": [unit]}}
    controlled = run(runtime, control)
    for after_skip in (True, False):
        both = run(runtime, {**control, SHRINK: {"args": [True, 1, 2.0, 0.0, 0.5, after_skip]},
                             FREEU: {"args": [True, 1.5, 1.6, 0.5, 0.4]}})
        assert both.warnings == [] and pixels(both) != pixels(controlled)
        assert "ControlNet 0" in both.infotexts[0] and "kohya_hrfix_enabled" in both.infotexts[0]
