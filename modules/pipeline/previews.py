"""Live previews: a cheap picture of the current denoised latent, without the VAE.

A1111's "Approx cheap" method: each latent channel contributes linearly to R, G and B.
The 4x3 factors below are the published per-family approximations (SD1/SD2 latents and
SDXL latents differ); the 16-channel latents of SD3 and Flux.1 have published 16x3
factors with a per-colour bias (the numbers ComfyUI's latent formats use). The picture is
at latent resolution (1/8 of the image), which is enough for a progress view and costs
microseconds instead of a full VAE decode.
"""

from __future__ import annotations

import torch
from PIL import Image

from modules.nn.configs import FLUX_VAE

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
# Rows: latent channels 0..15 of the scaled and shifted latents; columns: R, G, B.
SD3_FACTORS = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)
SD3_BIAS = (0.2394, 0.2135, 0.1925)
FLUX_FACTORS = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_BIAS = (-0.0329, -0.0718, -0.0851)
NO_BIAS = (0.0, 0.0, 0.0)

Factors = tuple[tuple[float, float, float], ...]


def preview_factors(family) -> tuple[Factors, tuple[float, float, float]]:
    """(channel x RGB factors, RGB bias) for a family's latents.

    16-channel latents are told apart by their statistics: Flux.1's VAE scale, else SD3.
    """
    if family.vae.embed_dim == 16:
        if family.vae.scale_factor == FLUX_VAE.scale_factor:
            return FLUX_FACTORS, FLUX_BIAS
        return SD3_FACTORS, SD3_BIAS
    return (SDXL_FACTORS if family.is_sdxl else SD1_FACTORS), NO_BIAS


def cheap_preview(latents: torch.Tensor, *, is_sdxl: bool = False,
                  factors: Factors | None = None,
                  bias: tuple[float, float, float] = NO_BIAS) -> Image.Image:
    """The first image of a (B, C, h, w) latent batch as an RGB picture (h x w); `factors`
    (C rows) default to SD1's or SDXL's 4 x 3."""
    table = torch.tensor(factors or (SDXL_FACTORS if is_sdxl else SD1_FACTORS),
                         dtype=torch.float32)
    channels = table.shape[0]
    rgb = torch.einsum("chw,cr->hwr", latents[0, :channels].float().cpu(), table)
    rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def family_preview(latents: torch.Tensor, family) -> Image.Image:
    """`cheap_preview` with the family's factors (SD1, SDXL, SD3 or Flux.1 latents)."""
    factors, bias = preview_factors(family)
    return cheap_preview(latents, factors=factors, bias=bias)


def preview_due(step: int, every: int, enabled: bool) -> bool:
    """Whether step `step` (1-based) gets a preview: every `every` steps when enabled."""
    return enabled and every > 0 and step % every == 0
