"""The `forge_unet_storage_dtype` setting ("Diffusion in Low Bits") through txt2img.

A tiny SD1 checkpoint and a tiny Flux.1 dev transformer (parts in the folders) generate
with the setting at "float8-e4m3fn": the U-Net / transformer holds low-bit layers, the
infotext says `Diffusion in Low Bits: float8-e4m3fn`, and the model was reloaded for the
change. Back at "Automatic" the model is reloaded dense and gives bit for bit the image
it gave before (tolerance 0), without the infotext key.

`.sft` (Flux's other extension for safetensors) is listed as a checkpoint and read as
safetensors: a copy of the Flux file under that name loads low-bit and gives the same image.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from modules.app.cmd_args import parse_args
from modules.models.lowbit_load import low_bit_layers
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from tests.helpers.checkpoints import finish, write_tiny_checkpoint
from tests.helpers.flow_files import PIPELINE_VAE, random_parts, write_separate
from tests.tiny import TINY_SD15

KEY = "Diffusion in Low Bits"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("storage-data")
    checkpoints = data / "models" / "Stable-diffusion"
    write_tiny_checkpoint(checkpoints / "sd1-tiny.safetensors", TINY_SD15)
    write_separate(checkpoints / "flux-tiny.safetensors", data / "models",
                   random_parts("flux", seed=1, vae=PIPELINE_VAE))
    shutil.copy(checkpoints / "flux-tiny.safetensors", checkpoints / "flux-sft.sft")
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--nowebui"]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


def _generate(runtime, name: str, label: str, job_label: str | None = None):
    runtime.settings.update({"forge_unet_storage_dtype": label})
    overrides = {"sd_model_checkpoint": name}
    if job_label is not None:
        overrides["forge_unet_storage_dtype"] = job_label
    params = Txt2ImgParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=2,
                           seed=1, do_not_save_samples=True, override_settings=overrides)
    result, _ = finish(txt2img(runtime, params))
    loaded = runtime.models.get(name, storage=job_label)  # the model the job ran
    return np.asarray(result.images[0]), result.infotexts[0], loaded


@pytest.mark.parametrize("name", ["sd1-tiny", "flux-tiny"])
def test_float8_setting_reloads_low_bit_and_automatic_is_unchanged(runtime, name):
    dense, infotext, loaded = _generate(runtime, name, "Automatic")
    assert KEY not in infotext and not low_bit_layers(loaded.model.unet)

    low, infotext, low_loaded = _generate(runtime, name, "float8-e4m3fn")
    assert low_loaded is not loaded  # the change of setting reloaded the model
    layers = low_bit_layers(low_loaded.model.unet)
    assert layers and set(layers.values()) == {"float8_e4m3fn"}
    assert f"{KEY}: float8-e4m3fn" in infotext
    assert low.shape == dense.shape and not np.array_equal(low, dense)

    again, infotext, dense_again = _generate(runtime, name, "Automatic")
    assert dense_again is not low_loaded and not low_bit_layers(dense_again.model.unet)
    assert KEY not in infotext
    assert np.array_equal(again, dense)  # bit for bit the image before the change


def test_a_jobs_override_holds_for_that_job(runtime):
    dense, _, _ = _generate(runtime, "sd1-tiny", "Automatic")
    low, infotext, loaded = _generate(runtime, "sd1-tiny", "Automatic", "float8-e5m2")
    assert set(low_bit_layers(loaded.model.unet).values()) == {"float8_e5m2"}
    assert f"{KEY}: float8-e5m2" in infotext and not np.array_equal(low, dense)
    again, infotext, loaded = _generate(runtime, "sd1-tiny", "Automatic")
    assert not low_bit_layers(loaded.model.unet) and KEY not in infotext
    assert np.array_equal(again, dense)


def test_sft_file_is_listed_and_read_as_safetensors(runtime):
    names = [info.name for info in runtime.models.checkpoints()]
    assert "flux-sft.sft" in names and "flux-tiny.safetensors" in names
    image, infotext, loaded = _generate(runtime, "flux-sft", "float8-e4m3fn")
    assert loaded.family.is_flow and low_bit_layers(loaded.model.unet)
    assert f"{KEY}: float8-e4m3fn" in infotext
    same, _, _ = _generate(runtime, "flux-tiny", "float8-e4m3fn")
    assert np.array_equal(image, same)
