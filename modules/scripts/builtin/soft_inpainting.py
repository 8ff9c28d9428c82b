"""Soft inpainting: A1111 1.8+'s built-in always-on script, written for Easel.

Plain inpainting keeps the original latent where the (latent-size) mask says "keep" and
the denoised one elsewhere, linearly, and pastes the original pixels back with the
blurred mask. With a blurred mask the transition band then mixes two unrelated
pictures. Soft inpainting treats the band as partly denoised instead:

- **Per step** (`SoftBlend.__call__`, the `InpaintBlend.blend` hook of
  `modules/sampling/cfg.py`): the repaint weight t of each latent pixel (0 keep,
  1 repaint) becomes t ** (sigma ** schedule_bias * preservation_strength), so the
  original is held strongly early (high sigma) and the band is released towards the end.
  The two latents are mixed with that weight, and the mix's per-pixel length (over
  channels) is set to a power mean (exponent: transition contrast boost) of the two
  lengths, so the band keeps contrast instead of fading to a grey average.
- **After decoding** (`SoftBlend.overlay_masks`): inside the band the original's opacity
  follows how much the picture changed there (the latent distance): 1/(1 + (d/h)^c),
  smoothed, with h the difference threshold (biased by the mask when "Mask influence" >
  0) and c the difference contrast. Where the picture barely changed the original shows,
  where it changed a lot the new content does.

Where the mask is exactly 0 or 1 both rules give plain inpainting bit for bit (the
tests check it), so only the band differs. Like A1111, the script turns mask rounding
off, or there would be no band; unlike A1111, it leaves rounding on when the mask the
user gave is already hard (only 0 and 255, no mask blur). Why: the latent mask is the
processing mask shrunk 8x with PIL's antialiased bicubic filter, whose support reaches
16 px (two latent pixels) each side, so every edge of a hard mask -- even one on the
8 px latent grid -- becomes fractional in the latent pixel on either side (20/255 and
235/255 beside an edge on the grid). Unrounded, that band would be blended softly
although the user drew none; rounded, a hard mask gives plain inpainting bit for bit
through the whole pipeline (`tests/test_soft_inpainting.py`).

Further differences from A1111: the distance-based opacity applies inside the band
only (A1111 lets it reach into fully masked and unmasked pixels too), it is computed
from the latent distance upsampled bilinearly (A1111 filters the distance with
percentile filters first), and "Inpaint only masked" keeps the plain overlay.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules.imaging import masks as M
from modules.scripts.args import arg
from modules.scripts.base import AlwaysVisible, Script

INFOTEXT = {
    "enabled": "Soft inpainting enabled",
    "schedule_bias": "Soft inpainting schedule bias",
    "preservation_strength": "Soft inpainting preservation strength",
    "transition_contrast_boost": "Soft inpainting transition contrast boost",
    "mask_influence": "Soft inpainting mask influence",
    "difference_threshold": "Soft inpainting difference threshold",
    "difference_contrast": "Soft inpainting difference contrast",
}


@dataclass
class SoftInpaintingArgs:
    enabled: bool = arg(False, "Soft inpainting")
    schedule_bias: float = arg(1.0, "Schedule bias", minimum=0.0, maximum=8.0, step=0.1)
    preservation_strength: float = arg(0.5, "Preservation strength", minimum=0.05, maximum=8.0,
                                       step=0.05)
    transition_contrast_boost: float = arg(4.0, "Transition contrast boost", minimum=1.0,
                                           maximum=32.0, step=0.5)
    mask_influence: float = arg(0.0, "Mask influence", minimum=0.0, maximum=1.0, step=0.05)
    difference_threshold: float = arg(0.5, "Difference threshold", minimum=0.0, maximum=8.0,
                                      step=0.25)
    difference_contrast: float = arg(2.0, "Difference contrast", minimum=0.0, maximum=8.0,
                                     step=0.25)


class SoftInpainting(Script):
    """Blends original and new content by a soft mask during and after sampling."""

    Args = SoftInpaintingArgs

    def title(self) -> str:
        return "Soft Inpainting"

    def show(self, is_img2img: bool):
        return AlwaysVisible if is_img2img else False

    def infotext_fields(self) -> dict[str, str]:
        return dict(INFOTEXT)

    def process(self, plan, args: SoftInpaintingArgs) -> None:
        params = plan.params
        has_mask = getattr(params, "mask", None) is not None or _has_alpha(params)
        if not args.enabled or plan.kind != "img2img" or not has_mask:
            return
        if not _hard_mask(params):  # keep the band soft (a hard mask has none to keep)
            plan.params = dataclasses.replace(params, mask_round=False)
        plan.inpaint_blend = SoftBlend(args)
        plan.extra_params.update({INFOTEXT[name]: True if name == "enabled" else value
                                  for name, value in dataclasses.asdict(args).items()})


def _hard_mask(params) -> bool:
    """Whether the processing mask will hold only 0 and 255: a hard mask (or an init
    image's transparency, always made hard), no mask blur and no resizing (which would
    make the resized edges fractional; "Inpaint only masked" overlays plainly anyway)."""
    if params.mask_blur_x > 0 or params.mask_blur_y > 0:
        return False
    source = params.mask if params.mask is not None else params.init_images[0]
    if source.size != (params.width, params.height) and not params.inpaint_full_res:
        return False
    if params.mask is None:
        return True  # from the alpha channel: `masks.mask_from_alpha` is binary
    values = set(np.unique(np.asarray(M.binary_mask(params.mask, round=False))).tolist())
    return values <= {0, 255}


def _has_alpha(params) -> bool:
    images = getattr(params, "init_images", None) or []
    return bool(images) and images[0].mode in ("RGBA", "LA", "PA")


@dataclass(frozen=True)
class SoftBlend:
    """The per-step latent blend and the after-decoding overlay of one job."""

    args: SoftInpaintingArgs

    def __call__(self, init: torch.Tensor, denoised: torch.Tensor, keep: torch.Tensor,
                 sigma: torch.Tensor | None) -> torch.Tensor:
        """The blended latent; `sigma` None: the final blend after the last step."""
        plain = denoised * (1 - keep) + init * keep
        band = (keep > 0) & (keep < 1)
        if sigma is None:  # the band keeps the sampled latent; the overlay decides later
            return torch.where(band, denoised, plain)
        exponent = float(sigma.reshape(-1)[0]) ** self.args.schedule_bias \
            * self.args.preservation_strength
        t = (1 - keep).clamp(0, 1) ** exponent
        return torch.where(band, self.mixed(init, denoised, t), plain)

    def mixed(self, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(1 - t) a + t b with its per-pixel length the power mean of the two lengths."""
        p = self.args.transition_contrast_boost
        mix = a * (1 - t) + b * t
        length = mix.norm(dim=1, keepdim=True)
        wanted = ((1 - t) * a.norm(dim=1, keepdim=True) ** p
                  + t * b.norm(dim=1, keepdim=True) ** p) ** (1 / p)
        return mix * (wanted / length.clamp_min(1e-6))

    def overlay_masks(self, repaint: Image.Image, init: torch.Tensor,
                      latents: torch.Tensor) -> list[Image.Image]:
        """Per image, the overlay's "not original" mask (L, 255 = new content), in the
        form `imaging.masks.overlay` takes; `repaint` is the blurred processing mask."""
        r = np.asarray(repaint.convert("L"), dtype=np.float64) / 255
        size = r.shape
        distance = (latents.float() - init.float()).norm(dim=1, keepdim=True)
        distance = F.interpolate(distance, size=size, mode="bilinear", align_corners=False)
        masks = []
        for d in distance[:, 0].cpu().numpy().astype(np.float64):
            new = np.where(r <= 0, 0.0, np.where(r >= 1, 1.0, 1 - self.opacity(d, r)))
            masks.append(Image.fromarray(np.rint(new * 255).astype(np.uint8), mode="L"))
        return masks

    def opacity(self, distance: np.ndarray, repaint: np.ndarray) -> np.ndarray:
        """The original's opacity from the change `distance` (latent units)."""
        a = self.args
        bias = 0.5 * (1 - a.mask_influence) \
            + a.mask_influence * (1 - repaint ** (a.preservation_strength / 2))
        half = a.difference_threshold * bias / (1.00001 - bias)  # change that halves it
        ratio = distance / np.maximum(half, 1e-6)
        value = 1 / (1 + ratio ** a.difference_contrast)
        return value * value * value * (value * (value * 6 - 15) + 10)  # smootherstep
