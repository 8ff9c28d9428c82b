"""The shipped silhouette T2I-Adapter steers the shipped demo model, judged in the pixels.

Each prompt names one position; the control map (the shape's silhouette, white on
black, as `modules.training.train_t2i_adapter` trains on) puts the shape at another.
With the adapter the shape follows the map; without it, the prompt. The adapter's
features go in through a CFG `before_model` hook (`generate_with_adapter`), the hook
point the ControlNet extension uses for its units; the sampler, CFG and denoiser are
the app's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.single_file import read_file_header
from modules.models.t2i_adapter_files import is_t2i_adapter, load_t2i_adapter
from modules.training.checker import analyze_image, parse_prompt
from modules.training.evaluate import load_model
from modules.training.shapes import POSITIONS, ShapeLabels, evaluation_prompts
from modules.training.train_controlnet import silhouette
from modules.training.train_t2i_adapter import generate_with_adapter

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
ADAPTER = ROOT / "models" / "ControlNet" / "easel-demo-t2i-silhouette.safetensors"
SIZE = 64
PROMPTS = 12
SEEDS = (0, 1, 2, 3)


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


@pytest.mark.slow
def test_shape_follows_the_silhouette_map_and_the_prompt_without_it() -> None:
    torch.set_num_threads(1)
    model = load_model(DEMO)
    adapter = load_t2i_adapter(ADAPTER, base=model.unet.config, device="cpu",
                               dtype=torch.float32)
    tokenizer = ClipTokenizer()
    follows_map, follows_prompt, total = 0, 0, 0
    for prompt in evaluation_prompts(PROMPTS):
        wanted = parse_prompt(prompt)
        target = moved(wanted)
        assert target.position != wanted.position
        maps = np.stack([silhouette(target, resolution=SIZE)] * len(SEEDS))
        prompts = [prompt] * len(SEEDS)
        controlled = generate_with_adapter(model, prompts, SEEDS, tokenizer=tokenizer,
                                           adapter=adapter, maps=maps)
        plain = generate_with_adapter(model, prompts, SEEDS, tokenizer=tokenizer)
        follows_map += sum(analyze_image(image).position == target.position
                           for image in controlled)
        follows_prompt += sum(analyze_image(image).position == wanted.position
                              for image in plain)
        total += len(SEEDS)
    print(f"with the map: {follows_map}/{total} at the map's position; "
          f"without: {follows_prompt}/{total} at the prompt's")
    assert follows_map / total >= 0.90
    assert follows_prompt / total >= 0.75
