"""The six guidance tools together (issue #24): composition, isolation, off means off.

On the shipped demo model with its LoRA and its silhouette ControlNet:
- one job with FreeU, SAG, PAG, Deep Shrink, HyperTile, CFG rescale and dynamic
  thresholding all on, plus a LoRA tag, a ControlNet unit and hires fix, runs, writes
  every tool's infotext keys, and differs from the plain job;
- the plain jobs before and after it give bit-identical images, and every parameter of
  the loaded model hashes the same before and after (nothing patched in place);
- every tool sent with `enabled: false` gives the plain job's image bit for bit;
- every sampler runs with all the tools on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.infotext import parse_infotext
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from modules.sampling.registry import SAMPLERS
from tests.helpers.checkpoints import finish

pytestmark = pytest.mark.slow  # demo-model jobs with every tool on (extra U-Net passes)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
LORAS = ROOT / "models" / "Lora"
CONTROLNETS = ROOT / "models" / "ControlNet"

FREEU = "FreeU Integrated (SD 1.x, SD 2.x, SDXL)"
SAG = "SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)"
PAG = "PerturbedAttentionGuidance Integrated"
SHRINK = "Kohya HRFix Integrated"
HYPERTILE = "Hypertile"
RESCALE = "CFG Rescale"
DYNTHRES = "DynamicThresholding (CFG-Fix) Integrated"

# Every tool on, at settings that change the demo's images.
ALL_ON = {
    FREEU: {"args": {"enabled": True, "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}},
    SAG: {"args": {"enabled": True, "scale": 0.8, "blur_sigma": 2.0, "threshold": 0.5}},
    PAG: {"args": {"enabled": True, "scale": 2.0}},
    SHRINK: {"args": {"enabled": True, "block_number": 1, "downscale_factor": 2.0,
                      "start_percent": 0.0, "end_percent": 0.5}},
    HYPERTILE: {"args": {"unet": True, "unet_second_pass": True, "max_depth_unet": 1,
                         "max_tile_unet": 128, "swap_size_unet": 2}},
    RESCALE: {"args": {"enabled": True, "phi": 0.7}},
    DYNTHRES: {"args": {"enabled": True, "mimic_scale": 4.0, "threshold_percentile": 0.95}},
}
# The infotext key each tool writes when it is on.
KEYS = {FREEU: "freeu_enabled", SAG: "sag_enabled", PAG: "pag_enabled",
        SHRINK: "kohya_hrfix_enabled", HYPERTILE: "Hypertile U-Net",
        DYNTHRES: "dynthres_enabled"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    data = tmp_path_factory.mktemp("guidance")
    ckpts = data / "ckpts"
    ckpts.mkdir()
    shutil.copy(DEMO, ckpts / DEMO.name)
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--ckpt-dir", str(ckpts),
                                    "--lora-dir", str(LORAS), "--controlnet-dir",
                                    str(CONTROLNETS), "--nowebui"]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


def _silhouette() -> str:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[8:40, 24:56] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _job(runtime, scripts: dict, **fields):
    fields = {"prompt": "a red circle in the center", "negative_prompt": "blue",
              "width": 64, "height": 64, "steps": 6, "cfg_scale": 6.0, "seed": 5,
              "sampler_name": "Euler", "do_not_save_samples": True,
              "do_not_save_grid": True, "alwayson_scripts": scripts, **fields}
    result, _ = finish(txt2img(runtime, Txt2ImgParams(**fields)))
    return result


def _model_hash(runtime) -> str:
    loaded = runtime.models.current
    digest = hashlib.sha256()
    for name, tensor in sorted(loaded.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def test_all_tools_compose_and_leave_plain_jobs_and_the_model_untouched(runtime):
    before = _job(runtime, {})
    model_before = _model_hash(runtime)
    controlnet = {"controlnet": {"args": [{"enabled": True, "module": "none",
                                           "model": "easel-demo-silhouette",
                                           "image": _silhouette(), "weight": 0.8}]}}
    everything = _job(runtime, {**ALL_ON, **controlnet},
                      prompt="a red circle in the center <lora:easel-bar:0.6>",
                      width=128, height=128,  # HyperTile tiles maps from 32 tokens up:
                      enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",  # the 256 px pass
                      denoising_strength=0.5, hr_second_pass_steps=3)
    after = _job(runtime, {})
    assert everything.warnings == []
    assert before.images[0].tobytes() == after.images[0].tobytes()
    assert _model_hash(runtime) == model_before
    assert everything.images[0].size == (256, 256)
    parsed = parse_infotext(everything.infotexts[0])
    for title, key in KEYS.items():
        assert key in parsed, f"{title}: infotext has no {key!r}"
    assert "Lora hashes" in parsed and "ControlNet 0" in parsed


def test_every_tool_sent_disabled_is_the_plain_image(runtime):
    plain = _job(runtime, {})
    off = {title: {"args": {**entry["args"], **_disabled(title)}}
           for title, entry in ALL_ON.items()}
    assert _job(runtime, off).images[0].tobytes() == plain.images[0].tobytes()


def _disabled(title: str) -> dict:
    return {"unet": False} if title == HYPERTILE else {"enabled": False}


def test_each_tool_alone_changes_the_image(runtime):
    # 256 px: HyperTile leaves maps under 32 tokens a side (A1111's 128 px minimum) whole.
    size = {"width": 256, "height": 256}
    plain = _job(runtime, {}, **size).images[0].tobytes()
    for title, entry in ALL_ON.items():
        image = _job(runtime, {title: entry}, **size).images[0].tobytes()
        assert image != plain, f"{title} changed nothing"


@pytest.mark.parametrize("label", [spec.label for spec in SAMPLERS])
def test_every_sampler_runs_with_all_tools(runtime, label):
    result = _job(runtime, ALL_ON, sampler_name=label, steps=4)
    assert result.warnings == []
    pixels = np.asarray(result.images[0], dtype=np.float32)
    assert pixels.std() > 1.0  # a picture, not a flat or broken field
