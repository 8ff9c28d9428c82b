"""How much work one generation request may ask for (docs/security.md,
"Bounded work per request").

A request is refused before it is queued, with a `ParamsError` naming the field, when:

- one image (the first pass, or the hires-fix target, whichever is larger) has more than
  `--max-pixels-per-image` pixels: attention over the latent grows with the square of
  the pixel count, so a larger image cannot finish in any useful time;
- all its images together (width x height x batch_size x n_iter, the hires target
  counted when hires fix is on) have more than `--max-pixels-per-request` pixels.

The limits are flags (read from `runtime.args`), never settings: a client cannot raise
them with `override_settings`. The prompt-length cap is `params.MAX_PROMPT_CHARS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.errors import ParamsError

DEFAULT_MAX_PIXELS_PER_IMAGE = 4096 * 4096  # 16.8 MP: 4096², or 2048 x 8192
DEFAULT_MAX_PIXELS_PER_REQUEST = 128 * 1024 * 1024  # 134 MP: 128 images of 1024²


@dataclass(frozen=True)
class PixelBudget:
    """The two pixel limits of a generation request."""

    per_image: int = DEFAULT_MAX_PIXELS_PER_IMAGE
    per_request: int = DEFAULT_MAX_PIXELS_PER_REQUEST

    @staticmethod
    def from_args(args) -> PixelBudget:
        return PixelBudget(
            per_image=getattr(args, "max_pixels_per_image", None) or DEFAULT_MAX_PIXELS_PER_IMAGE,
            per_request=(getattr(args, "max_pixels_per_request", None)
                         or DEFAULT_MAX_PIXELS_PER_REQUEST))


def largest_image(params) -> tuple[str, int, int]:
    """(field to name, width, height) of the largest image one pass of `params` makes."""
    width, height, name = params.width, params.height, "width"
    scale_by = getattr(params, "scale_by", None)
    images = getattr(params, "init_images", None)
    if scale_by is not None and images:
        first = images[0]
        width = max(64, int(first.width * scale_by) // 8 * 8)
        height = max(64, int(first.height * scale_by) // 8 * 8)
        name = "scale_by"
    if getattr(params, "enable_hr", False):
        from modules.pipeline.params import hires_size

        hr_width, hr_height, _, _ = hires_size(params)
        if hr_width * hr_height > width * height:
            manual = params.hr_resize_x or params.hr_resize_y
            return ("hr_resize_x" if manual else "hr_scale"), hr_width, hr_height
    return name, width, height


def check_pixel_budget(params, budget: PixelBudget) -> None:
    """Raise a ParamsError naming the field when `params` asks for more than `budget`."""
    name, width, height = largest_image(params)
    pixels = width * height
    if pixels > budget.per_image:
        raise ParamsError(name, f"an image of {width}x{height} ({pixels:,} pixels) is over the "
                                f"limit of {budget.per_image:,} pixels per image "
                                f"(--max-pixels-per-image)")
    batch = pixels * params.batch_size
    if batch > budget.per_request:
        raise ParamsError("batch_size", f"{params.batch_size} images of {width}x{height} "
                                        f"({batch:,} pixels) are over the limit of "
                                        f"{budget.per_request:,} pixels per request "
                                        f"(--max-pixels-per-request)")
    total = batch * params.n_iter
    if total > budget.per_request:
        raise ParamsError("n_iter", f"{params.n_iter} batches of {params.batch_size} images of "
                                    f"{width}x{height} ({total:,} pixels) are over the limit of "
                                    f"{budget.per_request:,} pixels per request "
                                    f"(--max-pixels-per-request)")
