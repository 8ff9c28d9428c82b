"""Scaled-down families for fast CPU tests.

Same key names and the same structure as the full-size families (levels with and
without attention, linear vs conv proj_in, SDXL's ADM input), with small channel
counts so that a forward pass takes milliseconds.
"""

from __future__ import annotations

from dataclasses import replace

from modules.models import families as F
from modules.nn.configs import TextEncoderConfig, UNetConfig, VAEConfig

TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_num_groups=32)

TINY_CLIP = TextEncoderConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37)


def _tiny_open_clip(base: TextEncoderConfig, width: int) -> TextEncoderConfig:
    return replace(base, hidden_size=width, num_layers=3, num_heads=4, intermediate_size=4 * width,
                   projection_dim=width if base.projection_dim else None)


TINY_SD15 = replace(
    F.SD15,
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        transformer_depth=(1, 0),
        context_dim=32,
        num_heads=2,
    ),
    vae=TINY_VAE,
    text_encoders=(replace(F.SD15.text_encoders[0], config=TINY_CLIP),),
    native_resolution=64,
)

TINY_SD2 = replace(
    F.SD2,
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        transformer_depth=(1, 1),
        context_dim=48,
        num_heads=None,
        num_head_channels=16,
        use_linear_in_transformer=True,
    ),
    vae=TINY_VAE,
    text_encoders=(replace(F.SD2.text_encoders[0], config=_tiny_open_clip(F.CLIP_H, 48)),),
    native_resolution=64,
)

TINY_SDXL = replace(
    F.SDXL,
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=2,
        transformer_depth=(0, 2),
        transformer_depth_middle=2,
        context_dim=32 + 48,
        num_heads=None,
        num_head_channels=16,
        use_linear_in_transformer=True,
        adm_in_channels=48 + 6 * 256,
    ),
    vae=TINY_VAE,
    text_encoders=(
        replace(F.SDXL.text_encoders[0], config=replace(TINY_CLIP, layer=-2, final_norm=False)),
        replace(F.SDXL.text_encoders[1], config=_tiny_open_clip(F.CLIP_G, 48)),
    ),
    native_resolution=64,
)

TINY_SDXL_REFINER = replace(
    F.SDXL_REFINER,
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        transformer_depth=(0, 1),
        transformer_depth_middle=1,
        context_dim=48,
        num_heads=None,
        num_head_channels=16,
        use_linear_in_transformer=True,
        adm_in_channels=48 + 5 * 256,
    ),
    vae=TINY_VAE,
    text_encoders=(replace(F.SDXL_REFINER.text_encoders[0], config=_tiny_open_clip(F.CLIP_G, 48)),),
    native_resolution=64,
)

TINY_FAMILIES = (TINY_SD15, TINY_SD2, TINY_SDXL, TINY_SDXL_REFINER)
