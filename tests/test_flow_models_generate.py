"""Flow models from users' layouts generate through the whole pipeline (tiny, random).

An SD3.5-style all-in-one file (with T5, and without: completed from the folder) and a
Flux-style transformer with its parts in models/text_encoder/ and models/VAE/ are listed,
loaded by the model manager and run by txt2img; the infotext names the separate parts as
Forge does (`Module N`; pasting it back is tested in test_flow_modules_setting.py).
"""

from __future__ import annotations

import pytest

from modules.app.cmd_args import parse_args
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from tests.helpers.checkpoints import finish
from tests.helpers.flow_files import PIPELINE_VAE, random_parts, write_all_in_one, write_separate


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("flow-data")
    checkpoints = data / "models" / "Stable-diffusion"
    sd3 = random_parts("sd3", vae=PIPELINE_VAE)
    write_all_in_one(checkpoints / "sd35-tiny.safetensors", sd3)
    without_t5 = {kind: tensors for kind, tensors in sd3.items() if kind != "t5xxl"}
    write_all_in_one(checkpoints / "sd35-no-t5.safetensors", without_t5)  # incl_clips files
    write_separate(checkpoints / "flux-tiny.safetensors", data / "models",
                   random_parts("flux", seed=1, vae=PIPELINE_VAE))
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--nowebui"]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


@pytest.mark.parametrize(("name", "modules"), [
    ("sd35-tiny", {}),
    ("sd35-no-t5", {"Module 1": "t5xxl_fp16"}),  # completed by the folder's T5
    ("flux-tiny", {"Module 1": "ae", "Module 2": "clip_l", "Module 3": "t5xxl_fp16"}),
])
def test_generates_with_parts_in_the_infotext(runtime, name, modules):
    params = Txt2ImgParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=2,
                           seed=1, do_not_save_samples=True,
                           override_settings={"sd_model_checkpoint": name})
    result, _ = finish(txt2img(runtime, params))
    assert result.images[0].size == (64, 64)
    infotext = result.infotexts[0]
    for key, value in modules.items():
        assert f"{key}: {value}" in infotext
    assert ("Module 1" in infotext) == bool(modules)
    assert runtime.models.get(name).family.is_flow

