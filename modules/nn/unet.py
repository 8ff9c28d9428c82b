"""The denoising U-Net of Stable Diffusion (LDM `openaimodel.UNetModel`).

Latent Diffusion (Rombach et al., 2022, https://arxiv.org/abs/2112.10752) denoises VAE
latents with a U-Net (Ronneberger et al., 2015) whose levels are residual blocks,
optionally followed by spatial transformers that cross-attend to the text encoding.
SDXL (Podell et al., 2023, https://arxiv.org/abs/2307.01952) adds an "ADM" vector
`y` (pooled text embedding + Fourier features of image sizes and crop) that is embedded
by `label_emb` and added to the timestep embedding.

The attribute names are CompVis' (`time_embed`, `label_emb`, `input_blocks`,
`middle_block`, `output_blocks`, `out`), so the tensors of a single-file checkpoint
under `model.diffusion_model.` load by name with `load_state_dict(strict=True)`.

ControlNet hook point: `forward(..., control=ControlResiduals(...))`. As in ControlNet's
reference implementation (Zhang et al., 2023, https://arxiv.org/abs/2302.05543,
`cldm.py`), `control.middle` is added to the output of the middle block, and
`control.down[i]` is added to the skip connection saved from `input_blocks[i]` at the
moment the decoder concatenates it; the tensor flowing down the encoder is unchanged.
`control` may also be a `ControlSource`: a callable that computes the residuals from
the U-Net's own inputs (x, timesteps, context, y, and the call's `cancel`, which the
ControlNet checks between its blocks) at the start of the call, which is
what a ControlNet needs, since it runs on the same x_t, t and text as the U-Net.

Hypernetwork hook point: `forward(..., context_transform=...)` is handed to every
attention layer (see `modules.nn.transformer`), for this call only.

Guidance tools' hook point: `forward(..., patches=UNetPatches(...))`
(`modules.nn.unet_patches`): FreeU, Deep Shrink, HyperTile, SAG and PAG change this call
only, at the documented points between blocks and around the self-attention kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import AttentionBackend, Cancel, check, set_attention_backend
from modules.nn.configs import UNetConfig
from modules.nn.timestep import timestep_embedding
from modules.nn.token_merging import TokenMerging
from modules.nn.transformer import ContextTransform
from modules.nn.unet_blocks import TimestepEmbedSequential, Upsample
from modules.nn.unet_encoder import (
    build_input_blocks,
    build_label_emb,
    build_middle_block,
    build_time_embed,
    res_block,
    transformer,
)
from modules.nn.unet_patches import UNetPatches, block_places


@dataclass(frozen=True)
class ControlResiduals:
    """Residuals a ControlNet adds to the U-Net (already scaled by the control weight).

    down: one tensor per input block (same shape as that block's output), in
    `input_blocks` order. middle: same shape as the middle block's output.
    """

    down: tuple[torch.Tensor, ...]
    middle: torch.Tensor


class ControlSource(Protocol):
    """Residuals computed from the U-Net's inputs; None means no control for this call."""

    def __call__(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None,
        *,
        cancel: Cancel | None = None,
    ) -> ControlResiduals | None: ...


class UNetModel(nn.Module):
    """The LDM U-Net, configured by a `UNetConfig` (SD1, SD2, SDXL, refiner)."""

    def __init__(self, *, config: UNetConfig) -> None:
        """:param config: the architecture numbers (see `modules.nn.configs.UNetConfig`)."""
        super().__init__()
        self.config = config
        # Layout of the feature maps (`set_channels_last`).
        self.memory_format = torch.contiguous_format
        # Timestep embedding MLP over the sinusoidal features.
        self.time_embed = build_time_embed(config)
        # SDXL's ADM vector embedding (`label_emb.0.0`, `label_emb.0.2`).
        if config.adm_in_channels is not None:
            self.label_emb = build_label_emb(config)
        # Encoder and middle block (shared with ControlNet, `unet_encoder.py`).
        self.input_blocks, skip_channels = build_input_blocks(config)
        self.middle_block = build_middle_block(config)
        self._build_output_blocks(skip_channels)
        # Where each block sits (stage, index, level, attention depth), for `patches`.
        self.places = block_places(transformer_depth=tuple(config.transformer_depth),
                                   num_res_blocks=config.num_res_blocks)
        # Final GroupNorm-SiLU-conv to the output channels.
        self.out = nn.Sequential(
            nn.GroupNorm(config.norm_num_groups, config.model_channels),
            nn.SiLU(),
            nn.Conv2d(config.model_channels, config.out_channels, kernel_size=3, padding=1),
        )

    def _build_output_blocks(self, skip_channels: list[int]) -> None:
        """Decoder path: each block eats one skip connection (concatenated on channels)."""
        cfg = self.config
        self.output_blocks = nn.ModuleList()
        skips = list(skip_channels)
        channels = cfg.model_channels * cfg.channel_mult[-1]
        for level in reversed(range(len(cfg.channel_mult))):
            out_channels = cfg.model_channels * cfg.channel_mult[level]
            # `num_res_blocks + 1` blocks per level: one more than the encoder.
            for index in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [res_block(cfg, channels + skips.pop(), out_channels)]
                channels = out_channels
                if cfg.transformer_depth[level] > 0:
                    layers.append(transformer(cfg, channels, cfg.transformer_depth[level]))
                # Double the resolution at the end of every level but the top one.
                if level > 0 and index == cfg.num_res_blocks:
                    layers.append(Upsample(channels=channels))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype, in which the network computes."""
        return self.time_embed[0].weight.dtype

    def set_attention_backend(self, name: str | AttentionBackend) -> AttentionBackend:
        """Choose the attention kernel ("sdpa", "xformers", "sliced", "auto") for this model."""
        return set_attention_backend(self, name)

    def set_channels_last(self, enabled: bool) -> None:
        """Run the network on channels-last (NHWC) maps; same results, other memory layout.

        oneDNN (CPU) and cuDNN convolutions are faster on NHWC maps, and the spatial
        transformers' flatten-to-tokens becomes a view instead of a copy. The weights of
        the convolutions are converted once here; inputs are converted per call.
        """
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def _embedding(
        self, timesteps: torch.Tensor, y: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """Timestep embedding, plus the embedded ADM vector for SDXL."""
        features = timestep_embedding(timesteps, self.config.model_channels).to(dtype)
        emb = self.time_embed(features)
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ValueError(
                    "this U-Net needs the ADM vector `y` (SDXL size/crop conditioning)"
                )
            emb = emb + self.label_emb(y.to(dtype))
        elif y is not None:
            raise ValueError("`y` was given but this U-Net has no ADM input (label_emb)")
        return emb

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        control: ControlResiduals | ControlSource | None = None,
        context_transform: ContextTransform | None = None,
        token_merging: float = 0.0,
        cancel: Cancel | None = None,
        patches: UNetPatches | None = None,
    ) -> torch.Tensor:
        """Predict the noise (or v) of latents `x`.

        :param x: (B, in_channels, H, W) latents; H and W need not be multiples of 8
        :param timesteps: (B,) DDPM timesteps (float allowed), or one 0-d timestep for all
        :param context: (B, S, context_dim) text encoding
        :param y: (B, adm_in_channels) SDXL ADM vector, None for SD1/SD2
        :param control: ControlNet residuals, or a `ControlSource` (see the module docstring)
        :param context_transform: changes what attention keys / values see (hypernetworks)
        :param token_merging: ToMe ratio for this call, 0 = off (`modules.nn.token_merging`)
        :param cancel: its `check()` runs between blocks and attention chunks and raises
            to abandon the call (a job's stop request, `modules.jobs.Cancellation`)
        :param patches: the guidance tools' changes to this call (`modules.nn.unet_patches`)
        :return: (B, out_channels, H, W) in the dtype of `x`; computed in the weights' dtype
        """
        dtype = self.dtype
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if control is not None and not isinstance(control, ControlResiduals):
            control = control(x, timesteps, context, y, cancel=cancel)
        if control is not None and len(control.down) != len(self.input_blocks):
            raise ValueError(
                f"control.down has {len(control.down)} tensors, expected {len(self.input_blocks)}"
            )
        emb = self._embedding(timesteps, y, dtype)
        context = context.to(dtype)
        h = x.to(dtype).contiguous(memory_format=self.memory_format)
        tome = TokenMerging(ratio=token_merging, latent_tokens=x.shape[-2] * x.shape[-1])
        attention_args = dict(context_transform=context_transform, token_merging=tome,
                              cancel=cancel)
        patches = patches or None
        input_places, middle_place, output_places = self.places
        # Encoder: keep every block's output as a skip connection.
        skips = []
        for block, place in zip(self.input_blocks, input_places, strict=True):
            check(cancel)
            h = block(h, emb, context, patches=patches, place=place, **attention_args)
            if patches is not None:
                h = patches.after_input_block(h, place)
            skips.append(h)
            if patches is not None:
                h = patches.after_skip(h, place)
        check(cancel)
        h = self.middle_block(h, emb, context, patches=patches, place=middle_place,
                              **attention_args)
        if control is not None:
            h = h + _sized_like(control.middle.to(dtype), h)
            skips = [
                skip + _sized_like(residual.to(dtype), skip)
                for skip, residual in zip(skips, control.down, strict=True)
            ]
        # Decoder: concatenate the matching skip, upsample to the next skip's size.
        for block, place in zip(self.output_blocks, output_places, strict=True):
            check(cancel)
            skip = skips.pop()
            if patches is not None:
                h, skip = patches.before_output_block(h, skip, place)
            h = torch.cat([h, skip], dim=1)
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = block(h, emb, context, upsample_size=size, patches=patches, place=place,
                      **attention_args)
        # The final GroupNorm-SiLU-conv (called as a module: --lowvram streams it by its
        # hooks); callers get the ordinary layout back.
        return self.out(h).to(x.dtype).contiguous()


def _sized_like(residual: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A ControlNet residual at the size of the map it is added to, which a patch (Deep
    Shrink) may have made smaller than the ControlNet's own map."""
    if residual.shape[-2:] == h.shape[-2:]:
        return residual
    return F.interpolate(residual, size=tuple(h.shape[-2:]), mode="bilinear",
                         align_corners=False)
