"""The CFG-step tools (CFG Rescale, DynamicThresholding (CFG-Fix) Integrated) on a flow
model: they work in D space, which the flow denoiser gives too, so on a tiny random SD3.5
at CFG scale > 1 each changes the image, adds no warning and writes its infotext keys.
"""

from __future__ import annotations

import pytest

from modules.app.cmd_args import parse_args
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from tests.helpers.checkpoints import finish
from tests.helpers.flow_files import PIPELINE_VAE, random_parts, write_all_in_one


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("flow-data")
    write_all_in_one(data / "models" / "Stable-diffusion" / "sd35-tiny.safetensors",
                     random_parts("sd3", vae=PIPELINE_VAE))
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--nowebui"]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


def generate(runtime, scripts=None):
    params = Txt2ImgParams(prompt="a cat", negative_prompt="blurry", width=64, height=64,
                           steps=3, seed=1, cfg_scale=6.0, do_not_save_samples=True,
                           alwayson_scripts=scripts or {})
    result, _ = finish(txt2img(runtime, params))
    return result


@pytest.mark.parametrize(("title", "args", "key"), [
    ("CFG Rescale", {"enabled": True, "phi": 0.7}, "CFG Rescale: 0.7"),
    ("DynamicThresholding (CFG-Fix) Integrated", {"enabled": True, "mimic_scale": 2.0},
     "dynthres_mimic_scale: 2.0"),
])
def test_applies_to_a_flow_model(runtime, title, args, key):
    plain = generate(runtime)
    on = generate(runtime, {title: {"args": args}})
    assert on.images[0].tobytes() != plain.images[0].tobytes()
    assert key in on.infotexts[0]
    assert on.warnings == plain.warnings
    off = generate(runtime, {title: {"args": {**args, "enabled": False}}})
    assert off.images[0].tobytes() == plain.images[0].tobytes()
