"""`--cpu-backend openvino` draws the same pictures as eager PyTorch, as the app runs.

The shipped demo model, LoRA and ControlNet through the whole txt2img pipeline, once
with each backend: the same pixels within one level for a plain job, a LoRA job, a
ControlNet job and hires fix (a second latent size on the same compiled model), and the
OpenVINO path really ran (its compiled weight sets are counted). Token merging changes
the U-Net's computation, so it runs eagerly and gives eager's pixels exactly.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openvino", reason="the openvino extra is installed by launch.py")

from modules.app.cmd_args import parse_args  # noqa: E402
from modules.pipeline.params import Txt2ImgParams  # noqa: E402
from modules.pipeline.txt2img import txt2img  # noqa: E402
from modules.runtime import Runtime  # noqa: E402
from tests.helpers.checkpoints import finish  # noqa: E402
from tests.test_demo_concepts import DEMO, LORA  # noqa: E402
from tests.test_demo_controlnet import CONTROLNET  # noqa: E402


def make_runtime(data, backend: str) -> Runtime:
    runtime = Runtime.create(parse_args([
        "--data-dir", str(data), "--ckpt-dir", str(DEMO.parent), "--lora-dir", str(LORA.parent),
        "--controlnet-dir", str(CONTROLNET.parent), "--cpu-backend", backend]))
    runtime.ready.set()
    return runtime


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    pair = {backend: make_runtime(tmp_path_factory.mktemp(backend), backend)
            for backend in ("eager", "openvino")}
    yield pair
    for runtime in pair.values():
        runtime.jobs.stop()


def silhouette_png() -> str:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 20:44] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


JOBS = {
    "plain": {},
    "lora": {"prompt": "a red square on a blue background <lora:easel-bar:1>"},
    "controlnet": {"alwayson_scripts": {"controlnet": {"args": [{
        "enabled": True, "module": "none", "model": CONTROLNET.stem, "weight": 1.0,
        "image": silhouette_png()}]}}},
    "hires": {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
              "denoising_strength": 0.5, "hr_second_pass_steps": 4},
}


def pixels(runtime, **fields) -> np.ndarray:
    params = Txt2ImgParams(**{"prompt": "a red square on a blue background", "width": 64,
                              "height": 64, "steps": 8, "cfg_scale": 7.0,
                              "sampler_name": "DPM++ 2M", "scheduler": "Karras", "seed": 5,
                              "batch_size": 2, "do_not_save_samples": True, **fields})
    result = finish(txt2img(runtime, params))[0]
    assert not result.warnings, result.warnings
    return np.stack([np.asarray(image, dtype=np.int16) for image in result.images])


def accelerator(runtime):
    return runtime.models.get().patcher._shared.accelerator


def test_the_default_on_a_cpu_is_openvino_and_eager_stays_eager(runtimes, monkeypatch):
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)  # conftest pins eager for the suite
    assert accelerator(runtimes["eager"]) is None
    assert accelerator(runtimes["openvino"]) is not None
    assert Runtime.create(parse_args(["--data-dir", str(runtimes["eager"].paths.data_dir),
                                      "--ckpt-dir", str(DEMO.parent)])
                          ).models.unet_accelerator is not None


@pytest.mark.parametrize("job", list(JOBS))
def test_openvino_draws_what_eager_draws(runtimes, job):
    eager = pixels(runtimes["eager"], **JOBS[job])
    fast = accelerator(runtimes["openvino"])
    compiled_before = dict(fast._compiled)
    fast.timings.clear()
    got = pixels(runtimes["openvino"], **JOBS[job])
    assert got.shape == eager.shape
    assert np.abs(got - eager).max() <= 1, job
    # It ran through OpenVINO: a new weight set compiled, or the cached one was used.
    assert fast._compiled and (fast.timings or compiled_before.keys() & fast._compiled.keys())


def test_lora_sets_are_inputs_and_switching_them_compiles_nothing(runtimes):
    fast = accelerator(runtimes["openvino"])
    template = fast.template()
    pixels(runtimes["openvino"], **JOBS["lora"])
    changed = [inputs for inputs in fast._compiled if inputs]  # the LoRA's layers are inputs
    compiles = fast.timings.get("compiles", 0)
    weaker = JOBS["lora"]["prompt"].replace(":1>", ":0.5>")
    eager = pixels(runtimes["eager"], prompt=weaker)
    assert np.abs(pixels(runtimes["openvino"], prompt=weaker) - eager).max() <= 1
    pixels(runtimes["openvino"])  # and back to no LoRA
    assert changed and fast.timings.get("compiles", 0) == compiles and fast.disabled is None
    assert list(fast._compiled) == changed and fast._template is template


def test_token_merging_runs_eagerly_with_eager_pixels(runtimes):
    fields = {"override_settings": {"token_merging_ratio": 0.5}}
    fast = accelerator(runtimes["openvino"])
    assert fast.eager_reason({"token_merging": 0.5}) == "token merging"
    assert np.array_equal(pixels(runtimes["openvino"], **fields),
                          pixels(runtimes["eager"], **fields))
