"""Pictures a client sent, decoded only when their header says they are small enough.

`Image.open` reads the header alone: the size is known before any pixel is decoded.
A picture with more than `max_pixels` pixels is refused there, so a small file that
decompresses to a huge canvas (a 0.66 MB PNG of 13000 x 13000 costs 0.6-1.3 GB decoded)
costs nothing. Pillow's own bomb check (`Image.MAX_IMAGE_PIXELS`, a process-wide
value we leave alone) only refuses above 179 MP; the limit here is ours, per call.

Every route that decodes a client's picture goes through `open_bounded` (the API's
base64 / URL images in `modules/api/convert.py`, ControlNet's unit pictures).
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from modules.errors import ParamsError

DEFAULT_MAX_INPUT_PIXELS = 8192 * 8192  # 67 MP: the largest side the API generates, squared


class InvalidImage(ValueError):
    """Bytes that are not a picture Pillow can read."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: not a readable picture ({reason})")
        self.field = field_name


class ImageTooLarge(ParamsError):
    """A picture whose header announces more pixels than the limit."""


def open_bounded(data: bytes, *, field: str = "image",
                 max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """A fully loaded picture from `data`; refused from its header when over `max_pixels`.

    Raises `ImageTooLarge` (a ParamsError naming `field`) or `InvalidImage`.
    """
    try:
        image = Image.open(io.BytesIO(data))  # the header only
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(field, f"{error} (limit {max_pixels:,} pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidImage(field, str(error)) from None
    check_size(image.size, field=field, max_pixels=max_pixels)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImage(field, str(error)) from None
    return image


def check_size(size: tuple[int, int], *, field: str, max_pixels: int) -> None:
    """Refuse a width x height over `max_pixels` with a ParamsError naming `field`."""
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLarge(field, f"the picture is {width}x{height} ({width * height:,} "
                                   f"pixels), over the limit of {max_pixels:,} pixels "
                                   f"(--max-input-image-pixels)")
