"""Does the demo model draw what it is asked to? Generate a fixed prompt set and check pixels.

The fixed set is `shapes.evaluation_prompts(24)` x seeds 0..3, sampled as a user of the
app would: 20 steps of DPM++ 2M Karras with CFG scale 7 and the empty negative prompt,
at the model's native resolution, through Easel's own denoiser and sampler tables.
Each image goes to the pixel checker (`modules.training.checker`), and the accuracy of
every attribute is printed, with two timings: seconds per image over the batched run,
and the median seconds of one image alone (batch of one, prompt to pixels, after a
warm-up), the benchmark for "one image at native size in at most 3 s".

Run it with:

    python -m modules.training.evaluate \\
        [--checkpoint models/Stable-diffusion/easel-demo.safetensors]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.families import Family
from modules.models.loader import inspect_checkpoint, load_state_dict
from modules.models.sd_model import StableDiffusionModel
from modules.sampling.base import run_sampler
from modules.sampling.denoiser import Denoiser, model_sigmas
from modules.sampling.registry import compute_sigmas, resolve_sampler, start_sampler
from modules.training.captions import token_ids
from modules.training.checker import attribute_names, check
from modules.training.shapes import evaluation_prompts

DEFAULT_CHECKPOINT = Path("models/Stable-diffusion/easel-demo.safetensors")


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """The generation settings of the acceptance test."""

    sampler: str = "DPM++ 2M Karras"
    steps: int = 20
    cfg_scale: float = 7.0


def load_model(path: str | Path) -> StableDiffusionModel:
    """A checkpoint through the normal loader: detect the family, build, fill (float32)."""
    _, family = inspect_checkpoint(path)
    model = StableDiffusionModel(family=family)
    report = model.load_ldm_state_dict(load_state_dict(path, dtype=torch.float32))
    if report.missing:
        raise ValueError(f"{path}: parameters without weights: {report.missing[:5]}")
    return model.eval()


@torch.no_grad()
def generate(model: StableDiffusionModel, prompts: Sequence[str], seeds: Sequence[int], *,
             tokenizer: ClipTokenizer,
             settings: SamplingSettings = SamplingSettings()) -> np.ndarray:
    """One image per (prompt, seed) pair: (N, H, W, 3) uint8 at the native resolution."""
    family: Family = model.family
    encoder = next(iter(model.text_encoders.values()))
    context = encoder(token_ids(tokenizer, list(prompts))).hidden
    uncond = encoder(token_ids(tokenizer, [""])).hidden.expand_as(context)
    side = family.native_resolution // family.vae.downscale
    noise = torch.cat([torch.randn((1, family.latent_channels, side, side),
                                   generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    table = model_sigmas(family.schedule)
    denoiser = Denoiser(model.unet, sigmas=table, prediction=family.prediction)

    # Classifier-free guidance: one batched call for the conditional and unconditional rows.
    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                        context=torch.cat([context, uncond]))
        cond, unc = both.chunk(2)
        return unc + settings.cfg_scale * (cond - unc)

    sampler, scheduler = resolve_sampler(settings.sampler)
    sigmas = compute_sigmas(sampler, scheduler, settings.steps, table)
    latents = run_sampler(start_sampler(sampler, guided, noise * sigmas[0], sigmas))
    images = model.vae.decode(latents / family.vae.scale_factor + family.vae.shift_factor)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def evaluate(model: StableDiffusionModel, *, prompt_count: int = 24,
             seeds: Sequence[int] = (0, 1, 2, 3), settings: SamplingSettings = SamplingSettings(),
             batch_size: int = 8) -> dict[str, float]:
    """Accuracy per attribute over prompts x seeds, plus "seconds_per_image"."""
    tokenizer = ClipTokenizer()
    pairs = [(p, s) for p in evaluation_prompts(prompt_count) for s in seeds]
    verdicts: dict[str, list[bool]] = {name: [] for name in attribute_names()}
    # shape colour and background right in the same image (the figure)
    both: list[bool] = []
    start = time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        images = generate(model, [p for p, _ in chunk], [s for _, s in chunk], tokenizer=tokenizer,
                          settings=settings)
        for (prompt, _), image in zip(chunk, images):
            result = check(prompt, image)
            for name in verdicts:
                if getattr(result, name) is not None:
                    verdicts[name].append(bool(getattr(result, name)))
            both.append(bool(result.color and result.background))
    elapsed = time.perf_counter() - start
    scores = {name: float(np.mean(v)) for name, v in verdicts.items() if v}
    scores["color_and_background"] = float(np.mean(both))
    scores["seconds_per_image"] = elapsed / len(pairs)
    return scores


def benchmark(model: StableDiffusionModel, *, repeats: int = 5,
              settings: SamplingSettings = SamplingSettings()) -> float:
    """Median seconds for one image at native size, prompt to pixels (after a warm-up)."""
    tokenizer = ClipTokenizer()
    prompt = evaluation_prompts(1)[0]
    generate(model, [prompt], [0], tokenizer=tokenizer, settings=settings)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        generate(model, [prompt], [seed], tokenizer=tokenizer, settings=settings)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Check the demo model's images with the pixel checker.")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    scores = evaluate(model, prompt_count=args.prompts, seeds=range(args.seeds))
    scores["seconds_one_image"] = benchmark(model)
    for name, value in scores.items():
        print(f"{name:>18}: {value:.3f}")


if __name__ == "__main__":
    main()
