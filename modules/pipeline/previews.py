"""Live previews: a cheap picture of the current denoised latent, without the VAE.

A1111's "Approx cheap" method: each latent channel contributes linearly to R, G and B.
The 4x3 factors below are the published per-family approximations (SD1/SD2 latents and
SDXL latents differ). The picture is at latent resolution (1/8 of the image), which
is enough for a progress view and costs microseconds instead of a full VAE decode.
"""

from __future__ import annotations

import torch
from PIL import Image

# Rows: latent channels 0..3; columns: R, G, B.
SD1_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)


def cheap_preview(latents: torch.Tensor, *, is_sdxl: bool) -> Image.Image:
    """The first image of a (B, 4, h, w) latent batch as an RGB picture (h x w)."""
    factors = torch.tensor(SDXL_FACTORS if is_sdxl else SD1_FACTORS, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0, :4].float().cpu(), factors)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def preview_due(step: int, every: int, enabled: bool) -> bool:
    """Whether step `step` (1-based) gets a preview: every `every` steps when enabled."""
    return enabled and every > 0 and step % every == 0
