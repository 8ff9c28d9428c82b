"""Preview images during concept training (A1111's "Save an image every N steps").

A preview is one txt2img sample with the weights being trained: DPM++ 2M Karras, CFG
7, the empty negative prompt, seeded, at the model's native size. It uses the same
prompt encoding as training (`concept_core.encode_prompts`), so a preview shows what
the generation pipeline will draw with the saved file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from modules.conditioning.embeddings import EmbeddingTable
from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.sd_model import StableDiffusionModel
from modules.sampling.base import run_sampler
from modules.sampling.denoiser import Denoiser, model_sigmas
from modules.sampling.registry import compute_sigmas, resolve_sampler, start_sampler
from modules.training.concept_core import UNetCall, encode_prompts


@torch.no_grad()
def preview_image(model: StableDiffusionModel, tokenizer: ClipTokenizer, prompt: str, *, seed: int,
                  embeddings: EmbeddingTable | None = None, unet: UNetCall | None = None,
                  text_encoder=None, steps: int = 20, cfg_scale: float = 7.0) -> Image.Image:
    """One sample of `prompt` with the given (trained) embedding table / U-Net call."""
    family = model.family
    context = encode_prompts(model, tokenizer, [prompt], embeddings=embeddings,
                             text_encoder=text_encoder)
    uncond = encode_prompts(model, tokenizer, [""], text_encoder=text_encoder)
    side = family.native_resolution // family.vae.downscale
    noise = torch.randn((1, family.latent_channels, side, side),
                        generator=torch.Generator().manual_seed(seed))
    table = model_sigmas(family.schedule)
    denoiser = Denoiser(unet or model.unet, sigmas=table, prediction=family.prediction)

    # Classifier-free guidance, conditional and unconditional rows in one call.
    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                        context=torch.cat([context, uncond]))
        cond, unc = both.chunk(2)
        return unc + cfg_scale * (cond - unc)

    sampler, scheduler = resolve_sampler("DPM++ 2M Karras")
    sigmas = compute_sigmas(sampler, scheduler, steps, table)
    latents = run_sampler(start_sampler(sampler, guided, noise * sigmas[0], sigmas))
    pixels = model.vae.decode(latents / family.vae.scale_factor + family.vae.shift_factor)
    array = ((pixels[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def save_preview(image: Image.Image, folder: Path, name: str, step: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{step}.png"
    image.save(path)
    return path
