"""Architecture configs for the networks of Stable Diffusion.

Each config is a frozen dataclass holding only the numbers that decide the shapes of
the network. Families (SD1, SD2, SDXL, ...) are declared from these in
`modules/models/families.py`; tests build scaled-down variants of the same configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """The LDM `openaimodel.UNetModel` hyper-parameters.

    `transformer_depth` has one entry per level (0 means the level has no
    SpatialTransformer); SD1 is (1, 1, 1, 0), SDXL (0, 2, 10).
    Exactly one of `num_heads` (SD1: a fixed head count) and `num_head_channels`
    (SD2/SDXL: 64 channels per head) is set.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    context_dim: int = 768
    num_heads: int | None = 8
    num_head_channels: int | None = None
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None
    norm_num_groups: int = 32

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def heads_for(self, channels: int) -> int:
        """Number of attention heads of a transformer with `channels` channels."""
        if self.num_heads is not None:
            return self.num_heads
        assert self.num_head_channels is not None
        return channels // self.num_head_channels


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """The LDM `AutoencoderKL` hyper-parameters (same layout for SD1, SD2 and SDXL).

    SD3 and Flux.1 use the same layout with 16 latent channels and no 1x1
    `quant_conv` / `post_quant_conv` (`use_quant_conv=False`); their latents are
    shifted as well as scaled: latent = (z - shift_factor) * scale_factor.
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_num_groups: int = 32
    scale_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# The 16-channel autoencoder of SD3 / SD3.5 and of Flux.1 (`ae.safetensors`): same
# network, different latent statistics.
SD3_VAE = VAEConfig(z_channels=16, embed_dim=16, use_quant_conv=False,
                    scale_factor=1.5305, shift_factor=0.0609)
FLUX_VAE = VAEConfig(z_channels=16, embed_dim=16, use_quant_conv=False,
                     scale_factor=0.3611, shift_factor=0.1159)


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """A CLIP text transformer, run through transformers' CLIP classes.

    `source_layout` says how the checkpoint stores it: "clip_l" is transformers'
    own layout (SD1, SDXL encoder 0); "open_clip" is OpenCLIP's `transformer.resblocks`
    layout (SD2, SDXL bigG) and is converted at load.
    `layer` is the hidden state used as cross-attention context (-1 last, -2
    penultimate); `final_norm` says whether `final_layer_norm` is applied to it.
    `pad_with_eos` is SD1's padding; OpenCLIP pads with id 0 after the first EOS.
    `projection_dim` is set when the pooled output is projected (SDXL bigG).
    """

    source_layout: Literal["clip_l", "open_clip"] = "clip_l"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "quick_gelu"
    vocab_size: int = 49408
    max_positions: int = 77
    projection_dim: int | None = None
    layer: int = -1
    final_norm: bool = True
    pad_with_eos: bool = True
    output_pooled: bool = False


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """A rectified-flow model's sigma shift and timestep convention (SD3, Flux.1).

    sigma runs from 1 (noise) to 0 on `num_timesteps` training steps, shifted to spend
    more steps at high noise: a fixed `shift` (SD3: 3.0), or with `dynamic_shift` a
    resolution-dependent mu, linear in the number of image tokens from `base_shift` at
    `base_image_seq_len` to `max_shift` at `max_image_seq_len` (Flux.1 dev).
    The network gets `timestep_scale * sigma` (SD3: 1000; Flux: 1, it scales inside).
    """

    num_timesteps: int = 1000
    shift: float = 1.0
    dynamic_shift: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    timestep_scale: float = 1000.0


SD3_FLOW = FlowConfig(shift=3.0)
FLUX_DEV_FLOW = FlowConfig(dynamic_shift=True, timestep_scale=1.0)
FLUX_SCHNELL_FLOW = FlowConfig(timestep_scale=1.0)


@dataclass(frozen=True, kw_only=True)
class NoiseScheduleConfig:
    """The DDPM training schedule the U-Net was trained on (scaled-linear betas)."""

    num_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
