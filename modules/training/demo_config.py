"""The architecture of Easel's demo model: a scaled-down Stable Diffusion 1.

The demo is SD1 in every structural respect, so the normal loader, samplers and VAE
code run it unchanged: an 8x-downscaling KL autoencoder with 4 latent channels, an
LDM U-Net with conv `proj_in` and a fixed head count, and a CLIP text transformer in
transformers' layout read through the real CLIP tokenizer (77 tokens, EOS padding,
last layer after the final layer norm). Only the widths and depths are small, so that
it trains on one CPU core in about an hour and fits in 30 MB at fp16.

The checkpoint declares its family in the safetensors metadata (`easel.family`, read by
`modules.models.family_metadata`), which carries the numbers shapes cannot tell (head
counts, group-norm groups, the latent scale factor measured after VAE training), plus
the usual modelspec keys (architecture, title, native resolution).
"""

from __future__ import annotations

from dataclasses import replace

from modules.models.families import SD15, Family
from modules.models.family_metadata import METADATA_KEY, family_to_metadata
from modules.nn.configs import TextEncoderConfig, UNetConfig, VAEConfig

NATIVE_RESOLUTION = 64
ARCHITECTURE = "stable-diffusion-v1"
TITLE = "Easel demo (shapes)"

# Metadata keys of the shipped checkpoint.
META_ARCHITECTURE = "modelspec.architecture"
META_TITLE = "modelspec.title"
META_RESOLUTION = "modelspec.resolution"
META_FAMILY = METADATA_KEY

# Few normalisation groups: with one channel per group, GroupNorm would erase the flat
# colours these images are made of (it subtracts each channel's mean), and learning stalls.
DEMO_VAE = VAEConfig(ch=16, ch_mult=(1, 1, 2, 4), num_res_blocks=1, norm_num_groups=1)

DEMO_UNET = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2, 4),
    num_res_blocks=1,
    transformer_depth=(1, 1, 0),
    transformer_depth_middle=1,
    context_dim=128,
    num_heads=4,
    norm_num_groups=4,
)

DEMO_TEXT = TextEncoderConfig(hidden_size=128, num_layers=3, num_heads=2, intermediate_size=512)

# SD1 with the small configs; the VAE scale factor is filled in after VAE training.
DEMO_FAMILY: Family = replace(
    SD15,
    label="SD 1.x (Easel demo)",
    unet=DEMO_UNET,
    vae=DEMO_VAE,
    text_encoders=(replace(SD15.text_encoders[0], config=DEMO_TEXT),),
    native_resolution=NATIVE_RESOLUTION,
)


def with_scale_factor(family: Family, scale_factor: float) -> Family:
    """The family with the latent scale measured on the trained VAE."""
    return replace(family, vae=replace(family.vae, scale_factor=round(scale_factor, 5)))


def demo_metadata(family: Family, *, title: str = TITLE) -> dict[str, str]:
    """The safetensors `__metadata__` of a checkpoint of this family."""
    size = family.native_resolution
    return {
        META_ARCHITECTURE: ARCHITECTURE,
        META_TITLE: title,
        META_RESOLUTION: f"{size}x{size}",
        META_FAMILY: family_to_metadata(family),
    }
