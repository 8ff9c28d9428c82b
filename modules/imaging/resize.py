"""A1111's image resize modes, used by img2img, inpainting and hires fix.

* 0 "Just resize": stretch to width x height.
* 1 "Crop and resize": scale to cover the box keeping the aspect ratio, centre-crop.
* 2 "Resize and fill": scale to fit inside the box, centre it, and fill the empty
  bands by stretching the image's outermost rows (or columns) over them. This is also
  the simplest outpainting: the bands are then repainted by img2img.
* 3 "Just resize (latent upscale)": the image keeps its size here; img2img resizes
  the encoded latent instead (bilinear).

`upscale(image, scale)`, when given, is used for enlarging (an upscaler model), after
which the result is brought to the exact size with Lanczos, as A1111 does.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

Upscale = Callable[[Image.Image, float], Image.Image]


def resize(image: Image.Image, width: int, height: int, upscale: Upscale | None = None
           ) -> Image.Image:
    """Exactly width x height: an upscaler when enlarging (if given), then Lanczos."""
    if upscale is not None and image.mode != "L":
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            image = upscale(image, scale)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def resize_image(mode: int, image: Image.Image, width: int, height: int,
                 upscale: Upscale | None = None) -> Image.Image:
    """Resize with A1111's img2img resize mode index (see the module docstring)."""
    if mode in (0, 3):
        return image if mode == 3 else resize(image, width, height, upscale)
    ratio, source_ratio = width / height, image.width / image.height
    if mode == 1:
        cover = ratio > source_ratio
        inner_w = width if cover else image.width * height // image.height
        inner_h = height if not cover else image.height * width // image.width
    elif mode == 2:
        fit_width = ratio < source_ratio
        inner_w = width if fit_width else image.width * height // image.height
        inner_h = height if not fit_width else image.height * width // image.width
    else:
        raise ValueError(f"resize mode must be 0-3, got {mode}")
    inner = resize(image, inner_w, inner_h, upscale)
    canvas = Image.new(image.mode if image.mode in ("L", "RGBA") else "RGB", (width, height))
    left, top = width // 2 - inner_w // 2, height // 2 - inner_h // 2
    canvas.paste(inner, (left, top))
    if mode == 2:
        _fill_bands(canvas, inner, left, top)
    return canvas


def _fill_bands(canvas: Image.Image, inner: Image.Image, left: int, top: int) -> None:
    """Stretch the inner image's edge rows/columns over the empty bands around it."""
    width, height = canvas.size
    if top > 0:
        canvas.paste(inner.resize((width, top), box=(0, 0, inner.width, 0)), (0, 0))
        bottom = height - top - inner.height
        if bottom > 0:
            edge = (0, inner.height, inner.width, inner.height)
            canvas.paste(inner.resize((width, bottom), box=edge), (0, top + inner.height))
    elif left > 0:
        canvas.paste(inner.resize((left, height), box=(0, 0, 0, inner.height)), (0, 0))
        right = width - left - inner.width
        if right > 0:
            edge = (inner.width, 0, inner.width, inner.height)
            canvas.paste(inner.resize((right, height), box=edge), (left + inner.width, 0))
