"""RRDBNet: the generator network of ESRGAN and Real-ESRGAN.

ESRGAN (Wang et al., 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial
Networks", https://arxiv.org/abs/1809.00219) replaces SRGAN's residual blocks by
Residual-in-Residual Dense Blocks (RRDB): three dense blocks of five 3x3 convolutions,
each convolution seeing the concatenation of all earlier features, with the block
output scaled by 0.2 before the residual add (residual scaling, sec. 3.1). The trunk
of RRDBs is followed by nearest-neighbour x2 upsampling + conv steps, a high-resolution
conv and the output conv. Real-ESRGAN (Wang et al., 2021,
https://arxiv.org/abs/2107.10833) keeps the network and, for x2 and x1 models, first
folds the input with pixel-unshuffle (space-to-depth) so the trunk runs at 1/4 size.

Module names follow BasicSR / Real-ESRGAN (`conv_first`, `body.N.rdb1.conv1`,
`conv_body`, `conv_up1`, `conv_hr`, `conv_last`); `keys.py` maps the original ESRGAN
layouts onto them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Slope of the leaky ReLU used everywhere, and the residual scaling factor.
NEGATIVE_SLOPE = 0.2
RESIDUAL_SCALE = 0.2


@dataclass(frozen=True, kw_only=True)
class RRDBConfig:
    """Shape numbers of one RRDBNet, as read from a state dict."""

    in_channels: int = 3
    out_channels: int = 3
    num_features: int = 64
    num_blocks: int = 23
    growth: int = 32
    num_upsamples: int = 2  # x2 steps after the trunk
    unshuffle: int = 1  # pixel-unshuffle factor before the trunk (Real-ESRGAN x2: 2, x1: 4)

    @property
    def scale(self) -> int:
        return 2**self.num_upsamples // self.unshuffle


class DenseBlock(nn.Module):
    """Five convolutions, each over the concatenation of the input and earlier outputs."""

    def __init__(self, *, features: int, growth: int) -> None:
        super().__init__()
        widths = [features + k * growth for k in range(5)]
        self.conv1 = nn.Conv2d(widths[0], growth, 3, padding=1)
        self.conv2 = nn.Conv2d(widths[1], growth, 3, padding=1)
        self.conv3 = nn.Conv2d(widths[2], growth, 3, padding=1)
        self.conv4 = nn.Conv2d(widths[3], growth, 3, padding=1)
        self.conv5 = nn.Conv2d(widths[4], features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), NEGATIVE_SLOPE))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three dense blocks with a scaled residual around them."""

    def __init__(self, *, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = DenseBlock(features=features, growth=growth)
        self.rdb2 = DenseBlock(features=features, growth=growth)
        self.rdb3 = DenseBlock(features=features, growth=growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> (B, 3, H * scale, W * scale)."""

    def __init__(self, *, config: RRDBConfig) -> None:
        super().__init__()
        self.config = config
        f = config.num_features
        self.conv_first = nn.Conv2d(config.in_channels * config.unshuffle**2, f, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(features=f, growth=config.growth)
                                    for _ in range(config.num_blocks)))
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        for k in range(config.num_upsamples):
            self.add_module(f"conv_up{k + 1}", nn.Conv2d(f, f, 3, padding=1))
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, config.out_channels, 3, padding=1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        # The trunk, with one long skip connection around it.
        feat = feat + self.conv_body(self.body(feat))
        # Upsampling: nearest x2, conv, leaky ReLU, per step.
        for k in range(self.config.num_upsamples):
            conv = getattr(self, f"conv_up{k + 1}")
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")),
                                NEGATIVE_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), NEGATIVE_SLOPE))
