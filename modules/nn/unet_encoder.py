"""The encoder half of the LDM U-Net: `input_blocks` and `middle_block`, as a builder.

The U-Net (`modules/nn/unet.py`) and ControlNet (`modules/nn/controlnet.py`, Zhang et
al., 2023, "Adding Conditional Control to Text-to-Image Diffusion Models",
https://arxiv.org/abs/2302.05543) share this half exactly: ControlNet is a trainable
copy of the encoder. Building it in one place keeps the two layouts (and so the
checkpoint key names `input_blocks.N.M...`, `middle_block.M...`) identical by
construction.
"""

from __future__ import annotations

from torch import nn

from modules.nn.configs import UNetConfig
from modules.nn.transformer import SpatialTransformer
from modules.nn.unet_blocks import Downsample, ResBlock, TimestepEmbedSequential


def res_block(config: UNetConfig, in_channels: int, out_channels: int) -> ResBlock:
    """A residual block fed by the config's timestep embedding."""
    return ResBlock(
        in_channels=in_channels,
        out_channels=out_channels,
        emb_channels=config.time_embed_dim,
        norm_num_groups=config.norm_num_groups,
    )


def transformer(config: UNetConfig, channels: int, depth: int) -> SpatialTransformer:
    """A spatial transformer cross-attending to the config's text context."""
    return SpatialTransformer(
        channels=channels,
        heads=config.heads_for(channels),
        depth=depth,
        context_dim=config.context_dim,
        use_linear=config.use_linear_in_transformer,
        norm_num_groups=config.norm_num_groups,
    )


def build_input_blocks(config: UNetConfig) -> tuple[nn.ModuleList, list[int]]:
    """Encoder path; returns the blocks and the channel count of each block's output."""
    # The input convolution from latent channels to `model_channels`.
    blocks = nn.ModuleList(
        [
            TimestepEmbedSequential(
                nn.Conv2d(config.in_channels, config.model_channels, kernel_size=3, padding=1)
            )
        ]
    )
    channels = config.model_channels
    out_channels = [channels]
    for level, mult in enumerate(config.channel_mult):
        # `num_res_blocks` x [ResBlock, SpatialTransformer?] at this resolution.
        for _ in range(config.num_res_blocks):
            layers: list[nn.Module] = [res_block(config, channels, mult * config.model_channels)]
            channels = mult * config.model_channels
            if config.transformer_depth[level] > 0:
                layers.append(transformer(config, channels, config.transformer_depth[level]))
            blocks.append(TimestepEmbedSequential(*layers))
            out_channels.append(channels)
        # Halve the resolution, except after the last level.
        if level != len(config.channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(Downsample(channels=channels)))
            out_channels.append(channels)
    return blocks, out_channels


def build_middle_block(config: UNetConfig) -> TimestepEmbedSequential:
    """ResBlock, SpatialTransformer, ResBlock at the lowest resolution."""
    channels = config.model_channels * config.channel_mult[-1]
    layers: list[nn.Module] = [res_block(config, channels, channels)]
    if config.transformer_depth_middle > 0:
        layers.append(transformer(config, channels, config.transformer_depth_middle))
    layers.append(res_block(config, channels, channels))
    return TimestepEmbedSequential(*layers)


def build_time_embed(config: UNetConfig) -> nn.Sequential:
    """Timestep embedding MLP over the sinusoidal features (`time_embed.0`, `.2`)."""
    emb_dim = config.time_embed_dim
    return nn.Sequential(
        nn.Linear(config.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
    )


def build_label_emb(config: UNetConfig) -> nn.Sequential:
    """SDXL's ADM vector embedding (`label_emb.0.0`, `label_emb.0.2`)."""
    assert config.adm_in_channels is not None
    emb_dim = config.time_embed_dim
    return nn.Sequential(
        nn.Sequential(
            nn.Linear(config.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
    )
