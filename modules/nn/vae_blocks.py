"""Building blocks of the LDM VAE: residual blocks, single-head attention, resampling.

The first-stage autoencoder of Latent Diffusion (Rombach et al., 2022,
https://arxiv.org/abs/2112.10752) reuses the convolutional blocks of the DDPM U-Net
(Ho et al., 2020) without a timestep input, and one full self-attention layer at the
lowest resolution. Names follow CompVis `ldm/modules/diffusionmodules/model.py`
(`norm1`, `conv1`, `nin_shortcut`, `q`, `k`, `v`, `proj_out`, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import AttentionLayer, Cancel, attention
from modules.nn.ops import add_fresh, silu_fresh

# A per-call wrapper of one layer: (layer, input) -> output (see `MidBlock.forward`).
AroundLayer = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor]


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """The VAE's normalisation: GroupNorm with LDM's epsilon of 1e-6."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a skip path (1x1 `nin_shortcut` if widths differ)."""

    def __init__(self, *, in_channels: int, out_channels: int, norm_num_groups: int = 32) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, norm_num_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SiLU and the residual add write in place when autograd is off (modules/nn/ops.py).
        h = self.conv1(silu_fresh(self.norm1(x)))
        h = self.conv2(silu_fresh(self.norm2(h)))
        return add_fresh(h, self.nin_shortcut(x))


class AttnBlock(AttentionLayer):
    """One-head self-attention over all pixels, with 1x1-conv projections and a residual."""

    def __init__(self, *, channels: int, norm_num_groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_num_groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, cancel: Cancel | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # Pixels as tokens of one head: (B, 1, H*W, C).
        q, k, v = (
            proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v)
        )
        out = attention(q, k, v, backend=self.attention_backend, upcast=self.attention_upcast,
                        cancel=cancel)
        out = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one pixel on the right and bottom only.

    LDM pads asymmetrically (0, 1, 0, 1) instead of using the convolution's symmetric
    padding; the weights were trained that way, so the padding is part of the model.
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution (`mid.*`)."""

    def __init__(self, *, channels: int, norm_num_groups: int = 32) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(
            in_channels=channels, out_channels=channels, norm_num_groups=norm_num_groups
        )
        self.attn_1 = AttnBlock(channels=channels, norm_num_groups=norm_num_groups)
        self.block_2 = ResnetBlock(
            in_channels=channels, out_channels=channels, norm_num_groups=norm_num_groups
        )

    def forward(self, x: torch.Tensor, cancel: Cancel | None = None,
                around_attention: AroundLayer | None = None) -> torch.Tensor:
        """:param around_attention: runs the attention block for this call, as
        `around_attention(layer, h)` (HyperTile's VAE option: the block per tile)"""
        h = self.block_1(x)
        if around_attention is None:
            h = self.attn_1(h, cancel)
        else:
            h = around_attention(lambda t: self.attn_1(t, cancel), h)
        return self.block_2(h)
