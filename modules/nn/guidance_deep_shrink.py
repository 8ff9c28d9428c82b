"""Kohya Deep Shrink ("HRFix"): the U-Net's feature map shrunk at one encoder depth.

A U-Net trained at one size composes a larger image as if it were several small ones
(repeated subjects, broken anatomy): its deep blocks see more positions than they were
trained on. Deep Shrink (kohya-ss, sd-scripts' `gen_img_diffusers.py` "Deep Shrink";
Forge's "Kohya HRFix Integrated") divides the feature map's height and width by
`downscale_factor` right after encoder block `block` for the early (composition) steps,
so everything deeper runs at about the trained size; the decoder brings the map back:

* `after_input_block` (`after_skip=False`): block `block`'s output is shrunk before it is
  kept as a skip connection, so the skip is small too;
* `after_skip` (`after_skip=True`): the skip keeps the full-size output; only the map
  flowing on down the encoder is shrunk;
* `before_output_block`: wherever the decoder's `h` and the skip it is about to be
  concatenated with differ in size, `h` is resized to the skip's size. The U-Net already
  upsamples each level to the next skip's size, so this is the block that consumes the
  shrink point's skip (and any odd rounding).

The shrunk size is `round(side / downscale_factor)` (at least 1). Resize methods are
`torch.nn.functional.interpolate` modes: "bicubic", "bilinear" (align_corners=False),
"nearest-exact", "area". Forge's "bislerp" (a spherical interpolation) is not offered.
The step window lives in the script's CFG hook: the patch itself is timeless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from modules.nn.unet_patches import BlockPlace, UNetPatch

Method = Literal["bicubic", "nearest-exact", "bilinear", "area"]
METHODS: tuple[str, ...] = ("bicubic", "nearest-exact", "bilinear", "area")


def resize(h: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """`h` resized to (height, width) with one of `METHODS`."""
    if method not in METHODS:
        raise ValueError(f"unknown resize method {method!r} (expected one of {list(METHODS)})")
    if tuple(h.shape[-2:]) == tuple(size):
        return h
    align = {"align_corners": False} if method in ("bicubic", "bilinear") else {}
    # Interpolated in float32 at least: bicubic/area kernels of half precision are not
    # available on every device.
    out = F.interpolate(h.float() if h.dtype in (torch.float16, torch.bfloat16) else h,
                        size=size, mode=method, **align)
    return out.to(h.dtype)


def shrunk_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """The map size after dividing both sides by `factor` (rounded, at least 1)."""
    return max(1, round(height / factor)), max(1, round(width / factor))


@dataclass(frozen=True)
class DeepShrinkPatch(UNetPatch):
    """Shrink after encoder block `block`; resize the decoder's `h` to each skip's size."""

    block: int
    downscale_factor: float = 2.0
    after_skip_connection: bool = True  # Forge's `downscale_after_skip`
    downscale_method: Method = "bicubic"
    upscale_method: Method = "bicubic"

    def _shrink(self, h: torch.Tensor) -> torch.Tensor:
        size = shrunk_size(h.shape[-2], h.shape[-1], self.downscale_factor)
        return resize(h, size, self.downscale_method)

    def after_input_block(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        if not self.after_skip_connection and place.index == self.block:
            return self._shrink(h)
        return h

    def after_skip(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        if self.after_skip_connection and place.index == self.block:
            return self._shrink(h)
        return h

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor,
                            place: BlockPlace) -> tuple[torch.Tensor, torch.Tensor]:
        if h.shape[-2:] != skip.shape[-2:]:
            h = resize(h, tuple(skip.shape[-2:]), self.upscale_method)
        return h, skip
