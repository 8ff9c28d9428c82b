"""The demo IP-Adapter's files and its measurement through the real pipeline.

Writing: the adapter in the IP-Adapter layout and the tiny image encoder (with its head
count in the metadata, so `load_clip_vision` rebuilds it). Measuring: prompts that name
no colour ("a large circle in the center") with a reference picture of a coloured shape,
through `processing.txt2img` and an `ip-adapter_clip_sd15` unit, judged by the pixel
checker; the same jobs without the unit give the chance level.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.models.ip_adapter_files import adapter_state_to_file
from modules.nn.ip_adapter import IPAdapter
from modules.training.checkpoint import save_model_file
from modules.training.shapes import COLORS, ShapeLabels
from modules.training.train_ip_adapter import (
    DEFAULT_ENCODER_OUT,
    jittered,
    same_colour_reference,
)


def save_ip_adapter(adapter: IPAdapter, path: str | os.PathLike[str], *, base_title: str,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write the adapter in the IP-Adapter layout (`image_proj.*`, `ip_adapter.<n>.*`)."""
    tensors = {k: v.detach().to(dtype).contiguous()
               for k, v in adapter_state_to_file(adapter).items()}
    metadata = {"modelspec.title": "Easel demo IP-Adapter",
                "modelspec.architecture": "stable-diffusion-v1/ip-adapter",
                "easel.base_model": base_title,
                "easel.image_encoder": DEFAULT_ENCODER_OUT.name}
    return save_model_file(tensors, Path(path), metadata)


def save_encoder(encoder, path: str | os.PathLike[str]) -> Path:
    """Write the image encoder's state dict (fp16) with the head count in the metadata."""
    tensors = {k: v.detach().to(torch.float16).contiguous()
               for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    metadata = {"modelspec.title": "Easel demo CLIP image encoder",
                "num_attention_heads": str(encoder.config.num_attention_heads),
                "hidden_act": encoder.config.hidden_act}
    return save_model_file(tensors, Path(path), metadata)



EVAL_PROMPT = "a large circle in the center"


def evaluation_references(count: int = 16, *, seed: int = 4321,
                          resolution: int = 64) -> list[tuple[str, np.ndarray]]:
    """(colour, picture) references cycling through the colours, other shapes and places."""
    rng = np.random.default_rng(seed)
    references = []
    for index in range(count):
        truth = same_colour_reference(
            ShapeLabels(shape="circle", color=COLORS[index % len(COLORS)], background="black"),
            rng)
        references.append((truth.color, jittered(truth, rng, resolution)))
    return references


def png_base64(picture: np.ndarray) -> str:
    """A picture as the API takes a unit's image: base64 PNG."""
    import base64
    import io

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def reference_job(*, seed: int, count: int, adapter_name: str | None,
                  picture: np.ndarray | None, weight: float = 1.0):
    """txt2img parameters for `EVAL_PROMPT` (64 px, 20 DPM++ 2M Karras steps, CFG 7, seeds
    `seed`..`seed + count - 1`), with one IP-Adapter unit of `picture` when it is given."""
    from modules.pipeline.params import Txt2ImgParams

    scripts = {}
    if adapter_name is not None and picture is not None:
        unit = {"enabled": True, "module": "ip-adapter_clip_sd15", "model": adapter_name,
                "image": png_base64(picture), "weight": weight}
        scripts = {"controlnet": {"args": [unit]}}
    return Txt2ImgParams(prompt=EVAL_PROMPT, width=64, height=64, steps=20, cfg_scale=7.0,
                         sampler_name="DPM++ 2M", scheduler="Karras", seed=seed,
                         batch_size=count, do_not_save_samples=True, alwayson_scripts=scripts)


def run_job(runtime, params):
    """Drive `processing.txt2img` to its end; the result (warnings must be empty)."""
    from modules.pipeline.txt2img import txt2img

    job = txt2img(runtime, params)
    try:
        while True:
            next(job)
    except StopIteration as stop:
        result = stop.value
    if result.warnings:
        raise RuntimeError(f"txt2img warned: {result.warnings}")
    return result


def measure(*, base: str | os.PathLike[str], adapter_path: str | os.PathLike[str],
            models_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str],
            references: int = 16, seeds_per_reference: int = 4,
            weight: float = 1.0) -> dict[str, float]:
    """Fraction of images whose shape has the reference's colour, with and without the
    adapter, through `processing.txt2img` and the ControlNet extension's IP-Adapter unit
    (prompt `EVAL_PROMPT`, no colour named), judged by the pixel checker.

    `models_dir` holds `clip_vision/` (the image encoder, as `Paths.clip_vision_dir`
    finds it); outputs and settings go to `data_dir`. Reference `i` uses the seeds
    `1000 + i * seeds_per_reference` onwards, with and without the unit, so "without"
    compares that many distinct images, not one set reused for every colour.
    """
    from modules.app.cmd_args import parse_args
    from modules.runtime import Runtime
    from modules.training.checker import analyze_image

    base, adapter_path = Path(base), Path(adapter_path)
    runtime = Runtime.create(parse_args([
        "--data-dir", str(data_dir), "--models-dir", str(models_dir),
        "--ckpt-dir", str(base.parent), "--controlnet-dir", str(adapter_path.parent)]))
    runtime.ready.set()
    hits = plain_hits = total = 0
    try:
        for index, (colour, picture) in enumerate(evaluation_references(references)):
            seed = 1000 + index * seeds_per_reference
            with_unit = run_job(runtime, reference_job(
                seed=seed, count=seeds_per_reference, adapter_name=adapter_path.stem,
                picture=picture, weight=weight))
            if not any("ControlNet 0:" in text for text in with_unit.infotexts):
                raise RuntimeError("the IP-Adapter unit did not run (no 'ControlNet 0:' in "
                                   "the infotext)")
            plain = run_job(runtime, reference_job(seed=seed, count=seeds_per_reference,
                                                   adapter_name=None, picture=None))
            hits += sum(analyze_image(image).color == colour for image in with_unit.images)
            plain_hits += sum(analyze_image(image).color == colour for image in plain.images)
            total += seeds_per_reference
    finally:
        runtime.jobs.stop()
    return {"with": hits / total, "without": plain_hits / total, "images": total}


