"""Tiny SD3.5 and Flux.1 families with random text encoders, for conditioning and pipeline tests.

Same structure as the real families (CLIP-L, CLIP-G with projection, T5 v1.1; MMDiT-X
with qk norm; Flux dev with `guidance_in`), with small widths: CLIP-L 16, CLIP-G 24
(SD3 pooled 40), T5 64 wide (SD3 context 64), Flux T5 32 wide and CLIP-L pooled 16. The
VAE keeps four levels (8x down) so that sizes, seeds and Flux's token count are those of
the real models; 64 x 64 pictures are 8 x 8 latents.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from modules.models.flow_families import FLUX_DEV_FAMILY, SD35_MEDIUM_FAMILY
from modules.nn.configs import VAEConfig
from modules.nn.flux import tiny_flux_config
from modules.nn.mmdit import SD35_MEDIUM
from modules.nn.t5_encoder import T5Config, T5TextEncoder
from modules.nn.text_encoders import TextEncoder


def _tiny_clip(config, width: int):
    return replace(config, hidden_size=width, num_layers=3, num_heads=4,
                   intermediate_size=2 * width,
                   projection_dim=width if config.projection_dim else None)


def _tiny_t5(width: int, max_tokens: int) -> T5Config:
    return T5Config(hidden_size=width, num_layers=2, num_heads=4, head_dim=8,
                    intermediate_size=48, max_tokens=max_tokens)


def _tiny_vae(base: VAEConfig) -> VAEConfig:
    return replace(base, ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1)


def _with_encoders(family, widths: dict[str, object]):
    specs = []
    for spec in family.text_encoders:
        value = widths[spec.name]
        config = value if isinstance(value, T5Config) else _tiny_clip(spec.config, value)
        specs.append(replace(spec, config=config))
    return tuple(specs)


TINY_SD35 = replace(
    SD35_MEDIUM_FAMILY, name="tiny_sd35", label="tiny SD3.5",
    diffusion=replace(SD35_MEDIUM, depth=3, head_dim=8, pos_embed_max_size=8,
                      adm_in_channels=40, context_in_channels=64,
                      x_block_self_attn_layers=(0, 1)),
    vae=_tiny_vae(SD35_MEDIUM_FAMILY.vae),
    text_encoders=_with_encoders(SD35_MEDIUM_FAMILY,
                                 {"clip_l": 16, "clip_g": 24, "t5xxl": _tiny_t5(64, 256)}),
    native_resolution=64,
)
TINY_FLUX_DEV = replace(
    FLUX_DEV_FAMILY, name="tiny_flux_dev", label="tiny Flux.1 dev",
    diffusion=tiny_flux_config(guidance_embed=True),
    vae=_tiny_vae(FLUX_DEV_FAMILY.vae),
    text_encoders=_with_encoders(FLUX_DEV_FAMILY, {"clip_l": 16, "t5xxl": _tiny_t5(32, 512)}),
    native_resolution=64,
)


def randomise(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Add `scale` * N(0, 1) to every parameter (norm scales stay near 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return module.eval()


def random_encoders(family, seed: int = 0) -> list[torch.nn.Module]:
    """The family's text encoders (CLIP as `TextEncoder`, T5 as `T5TextEncoder`), random."""
    encoders = []
    for index, spec in enumerate(family.text_encoders):
        torch.manual_seed(seed + index)
        if isinstance(spec.config, T5Config):
            encoder = T5TextEncoder(config=spec.config)
        else:
            encoder = TextEncoder(config=spec.config)
        encoders.append(randomise(encoder, seed + index))
    return encoders
