"""bf16 against fp32 on the CPU: speed and faithfulness (`--bf16`).

    PYTHONPATH=. .venv/bin/python bench/bench_precision.py [--parts demo,full] [--seeds 2]

* demo: the shipped demo model, `modules.training.evaluate`'s fixed prompts x seeds
  (20 DPM++ 2M Karras steps, CFG 7, 64x64), generated in fp32 and in bf16 (weights and
  compute; the sampler's latents stay fp32 as in the app), alternately and timed.
  Reports the pixel checker's accuracy for each, and the pixel difference between the
  two sets of images: PSNR (8-bit) and max / mean absolute difference.
* full: full-size SD1.5 random weights (diffusers' init in our modules): one CFG U-Net
  call at a 64x64 latent, and one VAE decode at 256x256, in fp32 and bf16; reports the
  max absolute difference relative to the fp32 output's range, and PSNR of the decode.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def demo(seeds: int) -> dict:
    from modules.conditioning.tokenizer import ClipTokenizer
    from modules.training.checker import attribute_names, check
    from modules.training.evaluate import DEFAULT_CHECKPOINT, generate, load_model
    from modules.training.shapes import evaluation_prompts

    fp32 = load_model(ROOT / DEFAULT_CHECKPOINT)
    fp32.unet.set_channels_last(True)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    tokenizer = ClipTokenizer()
    pairs = [(p, s) for p in evaluation_prompts(24) for s in range(seeds)]
    images: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": []}
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for i in range(0, len(pairs), 8):  # alternate per batch of 8
        chunk = pairs[i:i + 8]
        for name, model in (("fp32", fp32), ("bf16", bf16)):
            start = time.perf_counter()
            images[name].append(generate(model, [p for p, _ in chunk], [s for _, s in chunk],
                                         tokenizer=tokenizer))
            seconds[name] += time.perf_counter() - start
    row = {"part": "demo", "images": len(pairs)}
    for name in images:
        stacked = np.concatenate(images[name])
        verdicts = [check(p, im) for (p, _), im in zip(pairs, stacked)]
        for attribute in attribute_names():
            found = [getattr(v, attribute) for v in verdicts if getattr(v, attribute) is not None]
            row[f"{name}_{attribute}"] = round(float(np.mean(found)), 3)
        row[f"{name}_s_per_image"] = round(seconds[name] / len(pairs), 4)
        images[name] = stacked
    difference = np.abs(images["fp32"].astype(int) - images["bf16"].astype(int))
    row |= {"psnr_db": round(psnr(images["fp32"], images["bf16"]), 2),
            "max_abs_diff_8bit": int(difference.max()),
            "mean_abs_diff_8bit": round(float(difference.mean()), 3),
            "speedup_bf16": round(seconds["fp32"] / seconds["bf16"], 3)}
    print(json.dumps(row), flush=True)
    return row


def full() -> dict:
    from bench.pipeline_worker import build_unets, build_vaes
    from modules.models.families import SD15

    row: dict = {"part": "full"}
    unet, _ = build_unets(SD15, torch.float32)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=generator)
    context = torch.randn(2, 77, 768, generator=generator)
    t = torch.tensor([500.0, 500.0])
    with torch.inference_mode():
        reference = unet(x, t, context)
        unet.to(torch.bfloat16)
        low = unet(x, t, context).float()
    del unet
    row["unet_max_abs_diff_rel"] = round(float((low - reference).abs().max()
                                               / reference.abs().max()), 5)
    row["unet_rms_diff_rel"] = round(float((low - reference).pow(2).mean().sqrt()
                                           / reference.pow(2).mean().sqrt()), 5)
    vae, _ = build_vaes(SD15, torch.float32)
    z = torch.randn(1, 4, 32, 32, generator=generator)
    with torch.inference_mode():
        picture = vae.decode(z).clamp(-1, 1)
        vae.to(torch.bfloat16)
        picture_low = vae.decode(z).float().clamp(-1, 1)
    to8 = lambda im: ((im + 1) * 127.5).round().numpy()  # noqa: E731
    row["vae_psnr_db"] = round(psnr(to8(picture), to8(picture_low)), 2)
    row["vae_max_abs_diff_8bit"] = int(np.abs(to8(picture) - to8(picture_low)).max())
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="demo,full")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if "full" in parts:
        from bench.extras import require_test_extras

        require_test_extras(__file__, "diffusers")
    rows = []
    if "demo" in parts:
        rows.append(demo(args.seeds))
    if "full" in parts:
        rows.append(full())
    return rows


if __name__ == "__main__":
    main()
