"""ControlNet: a trainable copy of the U-Net encoder that steers a frozen U-Net.

Zhang, Rao & Agrawala (2023), "Adding Conditional Control to Text-to-Image Diffusion
Models" (https://arxiv.org/abs/2302.05543). The frozen U-Net's encoder (`input_blocks`,
`middle_block`) is copied; the copy sees the same noisy latent x_t, timestep and text
as the U-Net, plus a conditioning image c (edges, depth, pose, ... at pixel
resolution). A small convolutional encoder (`input_hint_block`) brings c down by 8 to
the latent grid, and its output is added to the copy's first block output. After every
encoder block and after the middle block a 1x1 convolution initialised to zero
(`zero_convs`, `middle_block_out`) produces one residual; the U-Net adds them to its
skip connections and middle output (`modules.nn.unet.ControlResiduals`). Because the
"zero convolutions" start at zero, training starts from the unchanged U-Net.

Attribute names are those of the reference `cldm.ControlNet` (`time_embed`,
`label_emb`, `input_hint_block.{0,2,...,14}`, `input_blocks`, `zero_convs.N.0`,
`middle_block`, `middle_block_out.0`), so `control_model.*` tensors of the original
`.pth` / `.safetensors` files load by name after the prefix is stripped. SDXL
ControlNets carry `label_emb` for the ADM vector, as the SDXL U-Net does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modules.nn.attention import Cancel, check
from modules.nn.configs import UNetConfig
from modules.nn.timestep import timestep_embedding
from modules.nn.unet import ControlResiduals
from modules.nn.unet_encoder import (
    build_input_blocks,
    build_label_emb,
    build_middle_block,
    build_time_embed,
)

# The hint encoder's widths in every released ControlNet (diffusers'
# `conditioning_embedding_out_channels`).
HINT_BLOCK_CHANNELS = (16, 32, 96, 256)


@dataclass(frozen=True, kw_only=True)
class ControlNetConfig:
    """A ControlNet's shape: the U-Net encoder it copies plus its hint encoder.

    `unet` is the copied U-Net's config (only the encoder fields matter);
    `hint_channels` the conditioning image's channels (3: RGB, in [0, 1]);
    `hint_block_channels` the hint encoder's widths, each level halving the resolution.
    """

    unet: UNetConfig
    hint_channels: int = 3
    hint_block_channels: tuple[int, ...] = HINT_BLOCK_CHANNELS

    @staticmethod
    def for_unet(unet: UNetConfig, *, hint_channels: int = 3) -> "ControlNetConfig":
        """The ControlNet of a U-Net family (SD1, SD2, SDXL with `label_emb`)."""
        return ControlNetConfig(unet=unet, hint_channels=hint_channels)

    @property
    def downscale(self) -> int:
        """Pixel size of one latent cell: 2 per hint-encoder level transition."""
        return 2 ** (len(self.hint_block_channels) - 1)


def build_hint_block(config: ControlNetConfig) -> nn.Sequential:
    """Conv-SiLU stack: hint -> 16 -> 16 -> 32 (s2) -> 32 -> 96 (s2) -> 96 -> 256 (s2) -> C.

    Convolutions sit at the even indices (`input_hint_block.0`, `.2`, ..., `.14`),
    SiLUs between them; the last convolution (to `model_channels`) has no activation.
    """
    widths = config.hint_block_channels
    conv = lambda c_in, c_out, stride=1: nn.Conv2d(  # noqa: E731
        c_in, c_out, kernel_size=3, padding=1, stride=stride
    )
    layers: list[nn.Module] = [conv(config.hint_channels, widths[0]), nn.SiLU()]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        # One conv at this resolution, then a stride-2 conv to the next width.
        layers += [conv(c_in, c_in), nn.SiLU(), conv(c_in, c_out, 2), nn.SiLU()]
    layers.append(conv(widths[-1], config.unet.model_channels))
    return nn.Sequential(*layers)


class ControlNet(nn.Module):
    """LDM `cldm.ControlNet`: forward(x, hint, timesteps, context, y) -> ControlResiduals."""

    def __init__(self, *, config: ControlNetConfig) -> None:
        """:param config: the copied encoder's U-Net config and the hint encoder's shape."""
        super().__init__()
        self.config = config
        unet = config.unet
        # Timestep (and SDXL ADM) embedding, as in the U-Net.
        self.time_embed = build_time_embed(unet)
        if unet.adm_in_channels is not None:
            self.label_emb = build_label_emb(unet)
        # Conditioning image encoder, pixels -> latent grid.
        self.input_hint_block = build_hint_block(config)
        # The copied encoder and middle block.
        self.input_blocks, block_channels = build_input_blocks(unet)
        self.middle_block = build_middle_block(unet)
        # One zero convolution per encoder block output, one for the middle block.
        self.zero_convs = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, c, kernel_size=1)) for c in block_channels]
        )
        middle = unet.model_channels * unet.channel_mult[-1]
        self.middle_block_out = nn.Sequential(nn.Conv2d(middle, middle, kernel_size=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def in_channels(self) -> int:
        """Latent channels the copied encoder takes (4; inpainting U-Nets take more)."""
        return self.config.unet.in_channels

    def _embedding(self, timesteps: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        features = timestep_embedding(timesteps, self.config.unet.model_channels).to(self.dtype)
        emb = self.time_embed(features)
        if self.config.unet.adm_in_channels is not None:
            if y is None:
                raise ValueError("this ControlNet needs the ADM vector `y` (an SDXL ControlNet)")
            emb = emb + self.label_emb(y.to(self.dtype))
        return emb

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        cancel: Cancel | None = None,
    ) -> ControlResiduals:
        """Residuals for the U-Net, unscaled (weights are the caller's business).

        :param x: (B, in_channels, h, w) the U-Net's (scaled) latent input
        :param hint: (B, hint_channels, 8h, 8w) conditioning image in [0, 1]
        :param timesteps: (B,) or 0-d timesteps
        :param context: (B, S, context_dim) text encoding
        :param y: (B, adm_in_channels) SDXL ADM vector, None for SD1/SD2
        :param cancel: its `check()` runs between blocks and attention chunks (a job's
            `modules.jobs.Cancellation`; raises `JobInterrupted` to abandon the call)
        :return: one residual per input block and one for the middle block, in x's dtype
        """
        dtype = self.dtype
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self._embedding(timesteps, y)
        context = context.to(dtype)
        guided_hint = self.input_hint_block(hint.to(dtype))
        h = x.to(dtype)
        outs = []
        for index, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            check(cancel)
            h = block(h, emb, context, cancel=cancel)
            # The encoded hint joins after the input convolution.
            if index == 0:
                h = h + guided_hint
            outs.append(zero_conv(h).to(x.dtype))
        check(cancel)
        h = self.middle_block(h, emb, context, cancel=cancel)
        return ControlResiduals(down=tuple(outs), middle=self.middle_block_out(h).to(x.dtype))
