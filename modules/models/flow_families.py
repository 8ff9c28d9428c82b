"""Rectified-flow families: SD3 Medium, SD3.5 Large / Large Turbo / Medium, Flux.1 dev / schnell.

Each is a small declaration, as the U-Net families in `families.py`: the config of its
diffusion transformer (an MMDiT or a Flux transformer), its 16-channel VAE with the
latent scale and shift, the text encoders it needs, its flow shift (`Family.flow`) and
the generation defaults a user of these models expects (Forge's and the model cards').

A `FlowFamily` is a `Family`, so code that reads any family still works: it has no
U-Net (`unet` holds a placeholder that is never built), `prediction` is "flow",
`is_sdxl` and `is_inpainting` are False and `latent_channels` is 16. Code that drives
the model looks at `architecture` ("sd3" or "flux") and `diffusion`.

Text encoders, where a single file keeps them (`text_encoders.<name>.transformer.`):
SD3.x needs CLIP-L + CLIP-G + T5-XXL, Flux.1 CLIP-L + T5-XXL. CLIP configs are those of
the real files; detection replaces every config with the one the file's shapes show,
so scaled-down test models load through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from modules.models.families import CLIP_G, CLIP_L, Family, TextEncoderSpec
from modules.nn.configs import (
    FLUX_DEV_FLOW,
    FLUX_SCHNELL_FLOW,
    FLUX_VAE,
    SD3_FLOW,
    SD3_VAE,
    UNetConfig,
)
from modules.nn.flux import FLUX_DEV, FLUX_SCHNELL, FluxConfig
from modules.nn.mmdit import SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM, MMDiTConfig
from modules.nn.t5_encoder import T5_XXL

Architecture = Literal["sd3", "flux"]
# Where an all-in-one file (ComfyUI / Forge / SAI) keeps each text encoder.
TEXT_ENCODER_PREFIX = "text_encoders.{name}.transformer."
# Flow families have no U-Net; `Family.unet` must hold something: this, never built.
NO_UNET = UNetConfig(in_channels=16, out_channels=16)


@dataclass(frozen=True, kw_only=True)
class GenerationDefaults:
    """What a request that says nothing gets: sampler, schedule, steps and guidance.

    `distilled_cfg_scale` is the guidance fed to a guidance-distilled model (Flux.1
    dev's `guidance_in`, Forge's "Distilled CFG Scale"); None when the model has none.
    """

    sampler: str = "Euler"
    scheduler: str = "Simple"
    steps: int = 28
    cfg_scale: float = 4.5
    distilled_cfg_scale: float | None = None


@dataclass(frozen=True, kw_only=True)
class FlowFamily(Family):
    """A rectified-flow family: a diffusion transformer, 16-channel VAE and its encoders."""

    architecture: Architecture
    diffusion: MMDiTConfig | FluxConfig
    defaults: GenerationDefaults
    size_multiple: int = 16  # width and height: whole 2x2 patches of 8x-down latents

    @property
    def needs(self) -> tuple[str, ...]:
        """Names of the text encoders this family needs ("clip_l", "clip_g", "t5xxl")."""
        return tuple(spec.name for spec in self.text_encoders)


def encoder(name: str, config) -> TextEncoderSpec:
    return TextEncoderSpec(name=name, prefix=TEXT_ENCODER_PREFIX.format(name=name), config=config)


# SD3's CLIP-L and CLIP-G: penultimate hidden states (not normed) and the pooled vector.
# Both are stored with transformers' names (`text_model.*`, G's `text_projection`).
SD3_CLIP_L = replace(CLIP_L, layer=-2, final_norm=False, output_pooled=True)
SD3_CLIP_G = replace(CLIP_G, source_layout="clip_l")
# Flux.1 reads only CLIP-L's pooled vector.
FLUX_CLIP_L = replace(CLIP_L, output_pooled=True)
SD3_ENCODERS = (encoder("clip_l", SD3_CLIP_L), encoder("clip_g", SD3_CLIP_G),
                encoder("t5xxl", T5_XXL))


def _flow_family(**fields) -> FlowFamily:
    return FlowFamily(unet=NO_UNET, prediction="flow", native_resolution=1024, **fields)


SD3_MEDIUM_FAMILY = _flow_family(
    name="sd3_medium", label="SD3 Medium", architecture="sd3", diffusion=SD3_MEDIUM,
    vae=SD3_VAE, text_encoders=SD3_ENCODERS, flow=SD3_FLOW,
    defaults=GenerationDefaults(steps=28, cfg_scale=7.0),
)
SD35_LARGE_FAMILY = _flow_family(
    name="sd35_large", label="SD3.5 Large", architecture="sd3", diffusion=SD35_LARGE,
    vae=SD3_VAE, text_encoders=SD3_ENCODERS, flow=SD3_FLOW,
    defaults=GenerationDefaults(steps=28, cfg_scale=3.5),
)
# Same network as Large, distilled for few steps without CFG; told apart by metadata only.
SD35_LARGE_TURBO_FAMILY = replace(
    SD35_LARGE_FAMILY, name="sd35_large_turbo", label="SD3.5 Large Turbo",
    defaults=GenerationDefaults(steps=4, cfg_scale=1.0),
)
SD35_MEDIUM_FAMILY = _flow_family(
    name="sd35_medium", label="SD3.5 Medium", architecture="sd3", diffusion=SD35_MEDIUM,
    vae=SD3_VAE, text_encoders=SD3_ENCODERS, flow=SD3_FLOW,
    defaults=GenerationDefaults(steps=40, cfg_scale=4.5),
)
# dev derivatives (Krea, ...) share dev's network and defaults.
FLUX_DEV_FAMILY = _flow_family(
    name="flux_dev", label="Flux.1 dev", architecture="flux", diffusion=FLUX_DEV,
    vae=FLUX_VAE, flow=FLUX_DEV_FLOW,
    text_encoders=(encoder("clip_l", FLUX_CLIP_L), encoder("t5xxl", replace(T5_XXL,
                                                                             max_tokens=512))),
    defaults=GenerationDefaults(steps=20, cfg_scale=1.0, distilled_cfg_scale=3.5),
)
FLUX_SCHNELL_FAMILY = _flow_family(
    name="flux_schnell", label="Flux.1 schnell", architecture="flux", diffusion=FLUX_SCHNELL,
    vae=FLUX_VAE, flow=FLUX_SCHNELL_FLOW,
    text_encoders=(encoder("clip_l", FLUX_CLIP_L), encoder("t5xxl", T5_XXL)),
    defaults=GenerationDefaults(steps=4, cfg_scale=1.0),
)

FLOW_FAMILIES: tuple[FlowFamily, ...] = (
    SD3_MEDIUM_FAMILY, SD35_LARGE_FAMILY, SD35_LARGE_TURBO_FAMILY, SD35_MEDIUM_FAMILY,
    FLUX_DEV_FAMILY, FLUX_SCHNELL_FAMILY,
)
# How errors and infotext name a text encoder.
ENCODER_LABELS = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}
