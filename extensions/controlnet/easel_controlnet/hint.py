"""From a unit's picture to the hint tensor a ControlNet reads.

Steps (the ControlNet extension's order): decode the base64 picture (and mask), choose
the preprocessor resolution ("pixel perfect": the one that lands on the target size
after the resize mode), preprocess, then fit the map to the generation size:

- Just Resize: stretch to W x H (aspect ratio not kept);
- Crop and Resize: scale to cover W x H, crop the centre;
- Resize and Fill: scale to fit inside W x H, fill the borders with the median colour
  of the map's own border pixels.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules.imaging.decode import open_bounded


def decode_image(text: str, field: str = "image") -> Image.Image:
    """A PIL image from base64 text (a `data:image/...;base64,` prefix is allowed)."""
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{field}: not a base64-encoded picture ({error})") from None
    return open_bounded(data, field=field)  # ValueErrors naming the field (too large: header)


def image_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB; transparency is composited on black."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"))


def mask_array(image: Image.Image) -> np.ndarray:
    """(H, W) bool, True where the mask is light (or opaque, for a mask with alpha)."""
    if image.mode in ("RGBA", "LA"):
        return np.asarray(image.getchannel("A")) > 127
    return np.asarray(image.convert("L")) > 127


def pixel_perfect_resolution(height: int, width: int, *, target_height: int,
                             target_width: int, resize_mode: str) -> int:
    """The preprocessor resolution (short side) that maps 1:1 onto the target pixels."""
    k_h, k_w = target_height / height, target_width / width
    k = min(k_h, k_w) if resize_mode == "Resize and Fill" else max(k_h, k_w)
    return int(np.round(k * min(height, width)))


def _resize(chw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (antialiased) resize; maps holding -1 (inpaint) use nearest."""
    if tuple(chw.shape[-2:]) == (height, width):
        return chw
    if bool((chw < 0).any()):
        return F.interpolate(chw[None], size=(height, width), mode="nearest")[0]
    return F.interpolate(chw[None], size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def _border_median(chw: torch.Tensor) -> torch.Tensor:
    borders = torch.cat([chw[:, 0, :], chw[:, -1, :], chw[:, :, 0], chw[:, :, -1]], dim=1)
    return borders.median(dim=1).values


def fit_to_target(detected: np.ndarray, *, width: int, height: int,
                  resize_mode: str) -> torch.Tensor:
    """(h, w, C) float map -> (C, height, width) float32 tensor by the resize mode."""
    chw = torch.from_numpy(np.ascontiguousarray(detected, dtype=np.float32)).permute(2, 0, 1)
    h, w = chw.shape[-2:]
    if resize_mode == "Just Resize":
        return _resize(chw, height, width)
    k_h, k_w = height / h, width / w
    if resize_mode == "Crop and Resize":
        k = max(k_h, k_w)
        scaled = _resize(chw, max(height, round(h * k)), max(width, round(w * k)))
        top = (scaled.shape[1] - height) // 2
        left = (scaled.shape[2] - width) // 2
        return scaled[:, top:top + height, left:left + width].contiguous()
    if resize_mode == "Resize and Fill":
        k = min(k_h, k_w)
        scaled = _resize(chw, min(height, round(h * k)), min(width, round(w * k)))
        out = _border_median(scaled)[:, None, None].expand(-1, height, width).clone()
        top = (height - scaled.shape[1]) // 2
        left = (width - scaled.shape[2]) // 2
        out[:, top:top + scaled.shape[1], left:left + scaled.shape[2]] = scaled
        return out
    raise ValueError(f"resize_mode: unknown mode {resize_mode!r}")


def map_to_png_base64(detected: np.ndarray) -> str:
    """A detected map as base64 PNG (the inpaint map's -1 shows as black)."""
    pixels = (np.clip(detected, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
