"""FreeU (Si et al., 2023, "FreeU: Free Lunch in Diffusion U-Net", arXiv 2309.11497).

In the decoder, just before a block concatenates the backbone features `h` with its skip
connection, FreeU

* scales the first half of `h`'s channels by a backbone factor `b` (the backbone carries
  the denoising, so amplifying it sharpens structure): v1 by the constant `b`; v2
  ("structure-aware") by `(b - 1) * m + 1` with `m` the channel mean of `h`, normalised
  to [0, 1] per image by its minimum and maximum over the map, so the boost follows
  where the features are strong;
* scales the lowest frequencies of the skip connection by `s` (the skips carry the high
  frequencies; damping their low-frequency part keeps them from washing out the
  backbone's): FFT over H and W, shifted so frequency 0 is at the centre, the centred
  box `[H//2 - 1, H//2 + 1) x [W//2 - 1, W//2 + 1)` multiplied by `s`, inverse FFT, real
  part. Computed in float32 (FFTs of half precision are slow or unstable).

Which decoder blocks get (b1, s1) and which (b2, s2) (`BlockRule`):

* "channels" (the official FreeU code, Forge, ComfyUI): by the channel count of `h`:
  `model_channels * 4` gets (b1, s1), `model_channels * 2` gets (b2, s2). On SD1 (channel
  multipliers 1, 2, 4, 4) that is every block of the two deepest levels plus the first
  block of the third (whose `h` still has the deeper level's channels) for b1, and the
  rest of the third level plus the first block of the top level for b2.
* "levels" (diffusers' `UNet2DConditionModel.enable_freeu`): by resolution level: every
  decoder block of the deepest level gets (b1, s1), every block of the next one (b2, s2).
  diffusers scales with v1's constant factor.

A flat map (its channel mean has the same value everywhere, e.g. a 1x1 map) has no
structure to follow: v2 then uses the constant factor `b`, like v1, instead of
dividing by zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from modules.nn.unet_patches import BlockPlace, UNetPatch

Version = Literal["1", "2"]
BlockRule = Literal["channels", "levels"]
FOURIER_THRESHOLD = 1  # half-size of the centred low-frequency box


def fourier_filter(x: torch.Tensor, scale: float, threshold: int = FOURIER_THRESHOLD
                   ) -> torch.Tensor:
    """`x` with its centred low-frequency box (half-size `threshold`) scaled by `scale`."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = freq.shape[-2:]
    row, col = height // 2, width // 2
    # Clamped at 0: on a 1-pixel side the box starts at index 0, as a mask over it would.
    rows = slice(max(row - threshold, 0), row + threshold)
    cols = slice(max(col - threshold, 0), col + threshold)
    freq[..., rows, cols] = freq[..., rows, cols] * scale  # `freq` is this call's own tensor
    spatial = torch.fft.ifftn(torch.fft.ifftshift(freq, dim=(-2, -1)), dim=(-2, -1)).real
    return spatial.to(x.dtype)


def backbone_factor(h: torch.Tensor, b: float, version: Version) -> torch.Tensor | float:
    """The factor of `h`'s first half of channels: `b` (v1) or (b - 1) * m + 1 (v2)."""
    if version == "1":
        return b
    mean = h.float().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = flat.max(dim=1).values.view(-1, 1, 1, 1) - low
    normalised = torch.where(span > 0, (mean - low) / span.clamp_min(1e-30),
                             torch.ones_like(mean))
    return ((b - 1) * normalised + 1).to(h.dtype)


def scale_backbone(h: torch.Tensor, b: float, version: Version) -> torch.Tensor:
    """A new `h` whose first half of channels is multiplied by the backbone factor."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * backbone_factor(h, b, version), h[:, half:]], dim=1)


@dataclass(frozen=True)
class FreeUPatch(UNetPatch):
    """FreeU on the decoder blocks its rule picks (module docstring); never in place."""

    b1: float
    b2: float
    s1: float
    s2: float
    model_channels: int
    levels: int  # the U-Net's number of resolution levels (len(channel_mult))
    version: Version = "2"
    rule: BlockRule = "channels"

    def factors(self, h: torch.Tensor, place: BlockPlace) -> tuple[float, float] | None:
        """(b, s) for decoder block `place` with backbone features `h`, or None (no change)."""
        if self.rule == "levels":
            key, first, second = place.level, self.levels - 1, self.levels - 2
        else:
            key, first, second = h.shape[1], self.model_channels * 4, self.model_channels * 2
        if key == first:
            return self.b1, self.s1
        if key == second:
            return self.b2, self.s2
        return None

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor,
                            place: BlockPlace) -> tuple[torch.Tensor, torch.Tensor]:
        picked = self.factors(h, place)
        if picked is None:
            return h, skip
        b, s = picked
        return scale_backbone(h, b, self.version), fourier_filter(skip, s)
