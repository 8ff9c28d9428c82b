"""Live previews of 16-channel latents (SD3, Flux.1) with their published 16 x 3 factors.

A (B, 16, h, w) latent previews to an h x w RGB picture with the family's factors and
bias (checked pixel by pixel against the linear map); SD1 / SDXL keep their 4 x 3 maps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from modules.models import families as F
from modules.nn.configs import FLUX_VAE, SD3_VAE
from modules.pipeline import previews as P

SD3_LIKE = replace(F.SD15, name="sd3_test", vae=SD3_VAE)
FLUX_LIKE = replace(F.SD15, name="flux_test", vae=FLUX_VAE)


@pytest.mark.parametrize(("family", "factors", "bias"), [
    (SD3_LIKE, P.SD3_FACTORS, P.SD3_BIAS),
    (FLUX_LIKE, P.FLUX_FACTORS, P.FLUX_BIAS),
], ids=["sd3", "flux"])
def test_16_channel_latent_previews_to_rgb(family, factors, bias) -> None:
    assert len(factors) == 16 and all(len(row) == 3 for row in factors)
    assert P.preview_factors(family) == (factors, bias)
    latents = torch.randn(2, 16, 12, 20, generator=torch.Generator().manual_seed(0))
    image = P.family_preview(latents, family)
    assert image.mode == "RGB" and image.size == (20, 12)
    rgb = torch.einsum("chw,cr->hwr", latents[0], torch.tensor(factors)) + torch.tensor(bias)
    expected = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().numpy()
    assert np.abs(np.asarray(image, dtype=np.float64) - expected).max() <= 1


def test_sd1_and_sdxl_previews_are_unchanged() -> None:
    assert P.preview_factors(F.SD15) == (P.SD1_FACTORS, P.NO_BIAS)
    assert P.preview_factors(F.SDXL) == (P.SDXL_FACTORS, P.NO_BIAS)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for family in (F.SD15, F.SDXL):
        old = P.cheap_preview(latents, is_sdxl=family.is_sdxl)
        assert np.array_equal(np.asarray(P.family_preview(latents, family)), np.asarray(old))
