"""Inpainting masks: binarise, blur, crop to the masked area, fill, overlay.

Conventions (A1111's, docs/a1111-semantics.md, "Inpainting"): a mask is an "L" image, white (255)
where the picture is repainted. An RGBA mask image uses its alpha channel; an RGBA init image
without a mask is repainted where it is transparent.

* `binary_mask`: threshold at 128 (`round`), or keep the grey levels.
* `blur_mask`: separable Gaussian with sigma = the blur radius and a kernel of
  `2 * int(2.5 * radius + 0.5) + 1` taps, first along x, then along y; borders are
  mirrored without repeating the edge pixel.
* `crop_region` / `expand_crop_region`: "Only masked" inpainting works on the mask's
  bounding box plus padding, widened to the output's aspect ratio, then pastes back.
* `fill`: "Masked content: fill" replaces masked pixels by ever less blurred copies of
  the surrounding colours, so the model starts from a plausible colour field.
* `overlay` / `apply_overlay`: the original outside the (blurred) mask goes back on
  top of the result, so untouched pixels stay exactly as they were.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from modules.imaging.resize import resize

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 (x2, y2 exclusive)

# "fill": (blur radius, times composited), from the widest blur to none.
FILL_PASSES: tuple[tuple[int, int], ...] = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def mask_from_alpha(image: Image.Image) -> Image.Image | None:
    """White where an RGBA image is not fully opaque; None if it has no transparency."""
    if image.mode != "RGBA" or image.getextrema()[-1] == (255, 255):
        return None
    return ImageOps.invert(image.getchannel("A")).point(lambda v: 255 if v > 0 else 0)


def binary_mask(mask: Image.Image, *, round: bool = True) -> Image.Image:
    """An "L" mask from an upload (an RGBA upload's alpha is the mask)."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        grey = mask.getchannel("A")
    else:
        grey = mask.convert("L")
    return grey.point(lambda v: 255 if v > 128 else 0) if round else grey


def gaussian_kernel(radius: float) -> np.ndarray:
    size = 2 * int(2.5 * radius + 0.5) + 1
    offsets = np.arange(size, dtype=np.float64) - size // 2
    kernel = np.exp(-(offsets**2) / (2 * radius * radius))
    return kernel / kernel.sum()


def _blur_axis(array: np.ndarray, radius: float, axis: int) -> np.ndarray:
    kernel = gaussian_kernel(radius)
    half = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    # Mirror without repeating the edge; very wide kernels fall back to edge padding.
    mode = "reflect" if half < array.shape[axis] else "edge"
    padded = np.pad(array, pad, mode=mode)
    out = np.zeros_like(array, dtype=np.float64)
    for k, weight in enumerate(kernel):
        window = padded[k:k + array.shape[0]] if axis == 0 else padded[:, k:k + array.shape[1]]
        out += weight * window
    return out


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Gaussian blur along x then y (radius 0 skips that axis)."""
    array = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        array = _blur_axis(array, blur_x, axis=1)
    if blur_y > 0:
        array = _blur_axis(array, blur_y, axis=0)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """The bounding box of non-zero mask pixels grown by `padding`; None for a blank mask."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (max(x1 - padding, 0), max(y1 - padding, 0),
            min(x2 + padding, mask.width), min(y2 + padding, mask.height))


def _grow(lo: int, hi: int, desired: float, limit: int) -> tuple[int, int]:
    diff = int(desired - (hi - lo))
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_crop_region(box: Box, width: int, height: int, image_width: int,
                       image_height: int) -> Box:
    """Grow `box` to the aspect ratio width:height, shifted to stay inside the image."""
    x1, y1, x2, y2 = box
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grow(y1, y2, (x2 - x1) / ratio, image_height)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * ratio, image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked pixels replaced by blurred surrounding colours (an RGB image)."""
    keep = ImageOps.invert(mask.convert("L"))
    known = Image.new("RGBa", image.size)
    known.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    result = Image.new("RGBA", image.size)
    for radius, times in FILL_PASSES:
        layer = known.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            result.alpha_composite(layer)
    return result.convert("RGB")


def overlay_mask(mask: Image.Image) -> Image.Image:
    """The overlay's mask: the blurred mask doubled, so it is opaque from mid-grey on."""
    array = np.asarray(mask.convert("L"), dtype=np.float32) * 2
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")


def overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """An RGBA copy of the original that is opaque where the mask is 0."""
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay))
    return layer.convert("RGBA")


def apply_overlay(result: Image.Image, layer: Image.Image, paste_to: Box | None) -> Image.Image:
    """Put `result` back (resized into `paste_to` for "Only masked"), original on top."""
    if paste_to is not None:
        x, y, w, h = paste_to
        base = Image.new("RGBA", layer.size)
        base.paste(resize(result, w, h), (x, y))
        result = base
    composed = result.convert("RGBA")
    composed.alpha_composite(layer)
    return composed.convert("RGB")
