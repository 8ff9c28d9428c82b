"""Adapter benchmark: the time a T2I-Adapter unit and an IP-Adapter unit add to a step.

    PYTHONPATH=. .venv/bin/python bench/bench_adapters.py [--runs 2] [--size 512] [--steps 4]

Full-size files with random weights in their real layouts are written to a temporary
data folder beside a full-size SD1.5 checkpoint (random fp16, `bench_core.write_sd15_fp16`):

- `t2iadapter_sketch-random.safetensors`: TencentARC's full SD1.x T2I-Adapter
  (`t2iadapter_*_sd14v1`: 4 levels of 320/640/1280/1280 channels, 2 blocks each);
- `ip-adapter_sd15-random.safetensors`: the plain SD1.5 IP-Adapter (4 image tokens,
  a decoupled key/value pair in each of the 16 cross-attention layers);
- `models/clip_vision/vit-h-random.safetensors`: a ViT-H/14 CLIP image encoder
  (`CLIPVisionModelWithProjection`, 32 layers of 1280, 1024-wide image embeds).

An Easel `Runtime` serves them as the app does on this CPU. Each configuration is one
txt2img job (Euler, CFG 7, batch 1: each step is one U-Net call on 2 rows) with one unit in
`alwayson_scripts.controlnet`, as an API client sends it; each unit's job runs right after
a plain job, so the pair sees nearly the same load on a shared machine. Reported, as
medians over the runs: the step time (between consecutive progress events, the first step
excluded) and its ratio to the plain neighbour's, and the time until the first step ends
against plain's (what the unit costs once per job: the adapter's features, or the image
encoder's tokens; files are loaded and checked by one small job per unit beforehand).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T2I_FILE = "t2iadapter_sketch-random.safetensors"
IP_FILE = "ip-adapter_sd15-random.safetensors"
ENCODER_FILE = "vit-h-random.safetensors"


def _random_fp16(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        tensor = torch.randn(shape, generator=generator) * 0.02
        if name.endswith(("norm.weight", "layer_norm1.weight", "layer_norm2.weight",
                          "pre_layrnorm.weight", "post_layernorm.weight")):
            tensor = torch.ones(shape)  # LayerNorm scales: keep activations in range
        out[name] = tensor.to(torch.float16).contiguous()
    return out


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def layouts() -> dict[str, dict[str, tuple[int, ...]]]:
    """Tensor names and shapes of the three files (built on the meta device), by the
    path each takes under the data folder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from modules.models.families import SD15
    from modules.models.ip_adapter_files import adapter_state_to_file
    from modules.nn.ip_adapter import IPAdapter, IPAdapterConfig, cross_attention_layers
    from modules.nn.t2i_adapter import T2IAdapter, T2IAdapterConfig

    with torch.device("meta"):
        t2i = T2IAdapter(config=T2IAdapterConfig(kind="full"))
        widths = tuple(width for _, width in cross_attention_layers(SD15.unet))
        ip = IPAdapter(config=IPAdapterConfig(kind="plain", image_dim=1024, context_dim=768,
                                              n_tokens=4, layer_widths=widths), base=SD15.unet)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=16, image_size=224, patch_size=14, projection_dim=1024,
            hidden_act="gelu"))
    return {f"models/ControlNet/{T2I_FILE}": _shapes(t2i),
            f"models/ControlNet/{IP_FILE}": {name: tuple(t.shape) for name, t
                                             in adapter_state_to_file(ip).items()},
            f"models/clip_vision/{ENCODER_FILE}": _shapes(encoder)}


def write_files(data: Path) -> None:
    """The three adapter-side files with random fp16 weights, where the app reads them."""
    from safetensors.torch import save_file

    for seed, (name, shapes) in enumerate(layouts().items(), 1):
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(_random_fp16(shapes, seed), str(path))


def picture_base64(size: int) -> str:
    """A sketch-like picture: a white ring on black."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (size, size))
    ImageDraw.Draw(picture).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                                    outline="white", width=max(2, size // 64))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def units(size: int) -> dict[str, dict]:
    image = picture_base64(size)
    unit = {"enabled": True, "image": image, "weight": 1.0, "resize_mode": "Just Resize"}
    return {
        "T2I-Adapter": {"controlnet": {"args": [
            {**unit, "module": "none", "model": Path(T2I_FILE).stem}]}},
        "IP-Adapter": {"controlnet": {"args": [
            {**unit, "module": "ip-adapter_clip_sd15", "model": Path(IP_FILE).stem}]}},
    }


def make_runtime(data: Path):
    """The adapter files, then the SD1.5 checkpoint and a Runtime (as bench_guidance)."""
    from bench.bench_guidance import make_runtime as runtime_with_sd15

    write_files(data)
    return runtime_with_sd15(data)


def _params(scripts: dict, *, size: int, steps: int):
    from modules.pipeline.params import Txt2ImgParams

    return Txt2ImgParams(prompt="a photograph of a lighthouse", negative_prompt="blurry",
                         width=size, height=size, steps=steps, cfg_scale=7.0, seed=1,
                         sampler_name="Euler", do_not_save_samples=True,
                         alwayson_scripts=scripts)


def check_units_run(runtime, configs: dict[str, dict]) -> None:
    """One small whole job per unit: a unit that was skipped (its warning in the result)
    would make a fast, meaningless measurement, so it stops the benchmark instead."""
    from modules.pipeline.txt2img import txt2img

    for name, scripts in configs.items():
        job = txt2img(runtime, _params(scripts, size=64, steps=1))
        try:
            while True:
                next(job)
        except StopIteration as stop:
            result = stop.value
        if result.warnings or "ControlNet 0" not in result.infotexts[0]:
            raise RuntimeError(f"{name}: the unit did not run: {result.warnings}")


def job_times(runtime, scripts: dict, *, size: int, steps: int) -> tuple[float, list[float]]:
    """(seconds until the first step ends, seconds between later steps) of one job."""
    from modules.jobs import Progress
    from modules.pipeline.txt2img import txt2img

    began = time.perf_counter()
    job = txt2img(runtime, _params(scripts, size=size, steps=steps))
    stamps: list[float] = []
    try:
        while len(stamps) < steps:
            if isinstance(next(job), Progress):
                stamps.append(time.perf_counter())
    finally:
        job.close()
    return stamps[0] - began, [b - a for a, b in zip(stamps, stamps[1:])]


def compare(runtime, configs: dict[str, dict], *, runs: int, size: int, steps: int) -> dict:
    """Each unit's job against a plain job run right before it; medians over the runs."""
    rows: dict[str, dict[str, list[float]]] = {
        name: {"plain_first": [], "first": [], "plain": [], "steps": []} for name in configs}
    for run in range(runs):
        for name, scripts in configs.items():
            plain_first, plain = job_times(runtime, {}, size=size, steps=steps)
            first, times = job_times(runtime, scripts, size=size, steps=steps)
            row = rows[name]
            row["plain_first"].append(plain_first)
            row["first"].append(first)
            row["plain"].extend(plain)
            row["steps"].extend(times)
            print(f"run {run + 1} plain: first {plain_first:.2f} s, steps "
                  f"{[round(t, 2) for t in plain]}; {name}: first {first:.2f} s, steps "
                  f"{[round(t, 2) for t in times]}", flush=True)
    report = {}
    for name, row in rows.items():
        base, unit = statistics.median(row["plain"]), statistics.median(row["steps"])
        report[name] = {
            "plain_step_s": round(base, 2), "step_s": round(unit, 2),
            "added_per_step": f"{100 * (unit / base - 1):+.1f}%",
            "plain_first_step_s": round(statistics.median(row["plain_first"]), 2),
            "first_step_s": round(statistics.median(row["first"]), 2)}
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        runtime = make_runtime(Path(folder))
        try:
            check_units_run(runtime, units(64))
            report = compare(runtime, units(args.size), runs=args.runs, size=args.size,
                             steps=args.steps)
        finally:
            runtime.jobs.stop()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
