"""The shipped silhouette T2I-Adapter steers the shipped demo model, judged in the pixels.

Each prompt names one position; the control map (the shape's silhouette, white on
black, as `modules.training.train_t2i_adapter` trains on) puts the shape at another.
With the adapter the shape follows the map; without it, the prompt. Everything runs
through `processing.txt2img` and the built-in ControlNet extension's units
(`alwayson_scripts.controlnet`), as the API does.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.models.single_file import read_file_header
from modules.models.t2i_adapter_files import is_t2i_adapter, load_t2i_adapter
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from modules.training.checker import analyze_image, parse_prompt
from modules.training.evaluate import load_model
from modules.training.shapes import POSITIONS, ShapeLabels, evaluation_prompts
from modules.training.train_controlnet import silhouette
from tests.helpers.checkpoints import finish

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
ADAPTER = ROOT / "models" / "ControlNet" / "easel-demo-t2i-silhouette.safetensors"
SIZE = 64
PROMPTS = 12
SEEDS = 4


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    assert DEMO.is_file() and ADAPTER.is_file(), "the demo model and its T2I-Adapter must ship"
    data = tmp_path_factory.mktemp("data")
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--ckpt-dir", str(DEMO.parent),
                                    "--controlnet-dir", str(ADAPTER.parent)]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


def moved(labels: ShapeLabels) -> ShapeLabels:
    """The same shape two positions further in POSITIONS' order (never the prompt's)."""
    names = list(POSITIONS)
    position = names[(names.index(labels.position) + 2) % len(names)]
    return ShapeLabels(shape=labels.shape, color="white", background="black", position=position,
                       size=labels.size)


def test_shipped_adapter_is_small_detected_and_fits_the_demo_model() -> None:
    assert ADAPTER.is_file(), "the demo T2I-Adapter must ship"
    assert ADAPTER.stat().st_size <= 5_000_000
    assert is_t2i_adapter(read_file_header(ADAPTER).tensors)
    model = load_model(DEMO)
    adapter = load_t2i_adapter(ADAPTER, base=model.unet.config, device="cpu",
                               dtype=torch.float32)
    assert adapter.config.kind == "full"
    assert adapter.config.channels == (32, 64, 128)



def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate(runtime, prompt: str, control_map: np.ndarray | None):
    units = [{"enabled": True, "module": "none", "model": ADAPTER.stem, "weight": 1.0,
              "image": png_base64(control_map)}] if control_map is not None else []
    params = Txt2ImgParams(prompt=prompt, width=SIZE, height=SIZE, steps=20, cfg_scale=7.0,
                           sampler_name="DPM++ 2M", scheduler="Karras", seed=0, batch_size=SEEDS,
                           do_not_save_samples=True,
                           alwayson_scripts={"controlnet": {"args": units}} if units else {})
    result = finish(txt2img(runtime, params))[0]
    assert result.warnings == []
    return result


@pytest.mark.slow
def test_shape_follows_the_silhouette_map_and_the_prompt_without_it(runtime):
    follows_map, follows_prompt, total = 0, 0, 0
    for prompt in evaluation_prompts(PROMPTS):
        wanted = parse_prompt(prompt)
        target = moved(wanted)
        assert target.position != wanted.position
        controlled = generate(runtime, prompt, silhouette(target, resolution=SIZE))
        assert f"Model: {ADAPTER.stem}" in controlled.infotexts[0]
        plain = generate(runtime, prompt, None)
        for image in controlled.images:
            follows_map += analyze_image(image).position == target.position
        for image in plain.images:
            follows_prompt += analyze_image(image).position == wanted.position
        total += SEEDS
    print(f"with the map: {follows_map}/{total} at the map's position; "
          f"without: {follows_prompt}/{total} at the prompt's")
    assert follows_map / total >= 0.90
    assert follows_prompt / total >= 0.75
