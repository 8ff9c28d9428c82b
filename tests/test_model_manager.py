"""The model manager: loading declared families, every family end to end, failures."""

from __future__ import annotations

import pytest
import torch

from modules.models.errors import ModelLoadError
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD2, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    data = tmp_path_factory.mktemp("data")
    rt = tiny_runtime(data, {"a-sd1": TINY_SD15, "b-sd2": TINY_SD2, "c-sdxl": TINY_SDXL,
                             "d-refiner": TINY_SDXL_REFINER})
    folder = data / "models" / "Stable-diffusion"
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return rt


@pytest.mark.parametrize("name", ["a-sd1", "b-sd2", "c-sdxl", "d-refiner"])
def test_every_family_generates(runtime, name):
    params = Txt2ImgParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=3,
                           seed=5, do_not_save_samples=True,
                           override_settings={"sd_model_checkpoint": name})
    result, _ = finish(txt2img(runtime, params))
    pixels = torch.tensor(list(result.images[0].get_flattened_data()), dtype=torch.float32)
    assert result.images[0].size == (64, 64)
    assert pixels.std() > 0  # not a blank image
    assert f"Model: {name}" in result.infotexts[0]


def test_override_checkpoint_is_for_that_job_only(runtime):
    runtime.models.select(runtime.models.find("a-sd1"))
    finish(txt2img(runtime, Txt2ImgParams(prompt="x", width=64, height=64, steps=2,
                                          do_not_save_samples=True,
                                          override_settings={"sd_model_checkpoint": "b-sd2"})))
    assert runtime.models.current_info.model_name == "a-sd1"
    assert runtime.models.get().info.model_name == "a-sd1"


def test_broken_file_is_a_clear_error_and_previous_model_keeps_serving(runtime):
    runtime.models.select(runtime.models.find("a-sd1"))
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        runtime.models.select(runtime.models.find("broken"))
    assert runtime.models.current.info.model_name == "a-sd1"
    with pytest.raises(ModelLoadError, match="no such checkpoint"):
        runtime.models.get("does-not-exist")


def test_loaded_family_is_the_declared_one(runtime):
    loaded = runtime.models.get("c-sdxl")
    assert loaded.family.unet == TINY_SDXL.unet
    assert loaded.family.is_sdxl and loaded.sha256 and len(loaded.shorthash) == 10
