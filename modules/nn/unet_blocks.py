"""Building blocks of the LDM U-Net: residual blocks, resampling, and the block container.

The residual block is the one of Ho et al. (2020, "Denoising Diffusion Probabilistic
Models", https://arxiv.org/abs/2006.11239) as written in OpenAI's improved-diffusion /
guided-diffusion `openaimodel.py`, which CompVis kept for Latent Diffusion: two
GroupNorm-SiLU-conv stages with the timestep embedding added in between, plus a skip
path. Attribute names (`in_layers`, `emb_layers`, `out_layers`, `skip_connection`,
`op`, `conv`) are CompVis', so checkpoint keys load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import Cancel
from modules.nn.ops import add_fresh, norm_silu_conv
from modules.nn.token_merging import TokenMerging
from modules.nn.transformer import ContextTransform, SpatialTransformer
from modules.nn.unet_patches import BlockPlace, UNetPatches


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + timestep embedding, GroupNorm-SiLU-conv, + skip."""

    def __init__(
        self, *, in_channels: int, out_channels: int, emb_channels: int, norm_num_groups: int = 32
    ) -> None:
        """
        :param in_channels: channels of the input map
        :param out_channels: channels of the output map
        :param emb_channels: width of the timestep (+ ADM) embedding
        """
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(norm_num_groups, in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        )
        # Per-channel shift from the embedding.
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # Index 2 is LDM's dropout slot (p = 0 in SD), kept so the indices match.
        self.out_layers = nn.Sequential(
            nn.GroupNorm(norm_num_groups, out_channels),
            nn.SiLU(),
            nn.Identity(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        # A 1x1 convolution on the skip path only where the channel count changes.
        if in_channels == out_channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Same function as calling the Sequentials; SiLU and adds write in place when
        # autograd is off (modules/nn/ops.py), which saves a map allocation per stage.
        h = norm_silu_conv(self.in_layers, x)
        h = add_fresh(h, self.emb_layers(emb)[:, :, None, None])
        h = norm_silu_conv(self.out_layers, h)
        return add_fresh(h, self.skip_connection(x))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution (`op`)."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), then a 3x3 convolution (`conv`).

    `size` overrides the doubling so that maps of odd size, which the stride-2 down
    path rounded up, come back to the size of the matching skip connection.
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers, each given what it needs: the embedding, the context, a size.

    Holds `ResBlock`s, `SpatialTransformer`s, `Downsample`/`Upsample` and plain layers
    (the input convolution), indexed `.0`, `.1`, `.2` as in the checkpoints.
    """

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
        context_transform: ContextTransform | None = None,
        token_merging: TokenMerging | None = None,
        cancel: Cancel | None = None,
        patches: UNetPatches | None = None,
        place: BlockPlace | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, context_transform, token_merging, cancel=cancel,
                          patches=patches, place=place)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x
