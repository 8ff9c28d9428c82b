"""The extra U-Net input channels of inpainting checkpoints (9-channel U-Nets).

An SD inpainting U-Net takes, next to the 4 noisy latent channels, 1 mask channel and
the 4-channel latent of the masked image: `cat([x, mask, masked_latent])`, the channel
order of diffusers' `StableDiffusionInpaintPipeline` and of A1111's `c_concat`. This
module builds `[mask, masked_latent]` (the `image_cond` of `CFGDenoiser`):

* img2img / inpaint: the mask is binarised (`round_mask`), the masked image is the
  source with the masked pixels set to 0 (grey in [-1, 1]), blended back toward the
  unmasked source by A1111's "conditional mask weight" (`inpainting_mask_weight`:
  1 = fully masked, 0 = the whole source visible), encoded, and the mask is resized
  to the latent size with nearest-neighbour interpolation.
* txt2img / hires with an inpainting model: mask 1 everywhere and the latent of a
  uniformly grey image, so the model paints freely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modules.pipeline.vae_codec import encode_images


def inpaint_image_cond(loaded, source: torch.Tensor, mask: torch.Tensor, *, weight: float,
                       settings=None, round_mask: bool = True, cancel=None) -> torch.Tensor:
    """`[mask, masked-image latent]` for a source (B, 3, H, W) in [-1, 1], mask (B, 1, H, W).

    `mask` is 1 where the image is repainted; `cancel` may stop the encode (a job's
    `Cancellation`).
    """
    mask = mask.to(source)
    if round_mask:
        mask = torch.round(mask)
    masked = torch.lerp(source, source * (1.0 - mask), weight)
    latent = encode_images(loaded, masked, settings, cancel=cancel)
    mask_latent = F.interpolate(mask, size=latent.shape[-2:])
    return torch.cat([mask_latent.to(latent), latent], dim=1)


def txt2img_image_cond(loaded, latent_shape: tuple[int, ...], settings=None,
                       cancel=None) -> torch.Tensor:
    """Mask of ones and the latent of a grey image, for inpainting models without a mask."""
    batch, _, height, width = latent_shape
    factor = loaded.family.vae.downscale
    grey = torch.zeros(batch, 3, height * factor, width * factor)
    latent = encode_images(loaded, grey, settings, cancel=cancel)
    return torch.cat([torch.ones(batch, 1, height, width).to(latent), latent], dim=1)
