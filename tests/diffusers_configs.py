"""diffusers constructor configs equivalent to our `UNetConfig` / `VAEConfig` (tests only).

Used to build diffusers reference models with the same architecture as ours, for
parity tests. Note diffusers' SD1 quirk: `attention_head_dim` is really the number of
heads per level (diffusers issue #2011), so it is given as heads for every family.
"""

from __future__ import annotations

from typing import Any

from modules.nn.configs import UNetConfig, VAEConfig

# SDXL embeds each size/crop/score number with 256 sinusoidal channels.
ADM_TIME_EMBED_DIM = 256


def unet_diffusers_config(config: UNetConfig) -> dict[str, Any]:
    """Keyword arguments for `diffusers.UNet2DConditionModel(**...)`.

    An ADM U-Net becomes diffusers' "text_time" addition embedding: its input is the
    pooled text embedding followed by 256 sinusoidal channels per time id.
    """
    widths = tuple(config.model_channels * m for m in config.channel_mult)
    depths = config.transformer_depth
    has_attention = [d > 0 for d in depths]
    # diffusers' mid block takes the last level's depth, so put the middle depth there.
    layers = [d if d > 0 else 1 for d in depths]
    if depths[-1] == 0:
        layers[-1] = config.transformer_depth_middle
    elif depths[-1] != config.transformer_depth_middle:
        raise ValueError(
            "diffusers cannot express a last-level depth different from the middle depth"
        )
    result: dict[str, Any] = dict(
        sample_size=32,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        block_out_channels=widths,
        down_block_types=tuple(
            "CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention
        ),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)
        ),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=config.num_res_blocks,
        transformer_layers_per_block=tuple(layers),
        cross_attention_dim=config.context_dim,
        attention_head_dim=tuple(config.heads_for(w) for w in widths),
        use_linear_projection=config.use_linear_in_transformer,
        norm_num_groups=config.norm_num_groups,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    if config.adm_in_channels is not None:
        result.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=ADM_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=config.adm_in_channels,
        )
    return result


def vae_diffusers_config(config: VAEConfig) -> dict[str, Any]:
    """Keyword arguments for `diffusers.AutoencoderKL(**...)`."""
    levels = len(config.ch_mult)
    return dict(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        layers_per_block=config.num_res_blocks,
        latent_channels=config.z_channels,
        norm_num_groups=config.norm_num_groups,
        scaling_factor=config.scale_factor,
    )
