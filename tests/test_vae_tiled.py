"""Tiled VAE against the plain VAE on a tiny random autoencoder with small tiles.

Quality bar: PSNR >= 35 dB against the untiled decode of the same latents, and no
seams: the mean absolute horizontal/vertical gradient across tile borders is at most
1.2x the gradient elsewhere. Also: tiled encode, the statistics actually shared across
tiles (per-tile GroupNorm would fail the seam test), and the automatic decision.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modules.nn.autoencoder import AutoencoderKL
from modules.nn.vae_tiled import tile_grid, tiled_decode, tiled_encode
from modules.pipeline import vae_codec
from modules.settings import Settings
from tests.tiny import TINY_VAE

TILE, OVERLAP = 16, 6  # latent pixels


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    model = AutoencoderKL(config=TINY_VAE).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    smooth = F.interpolate(torch.randn(1, 4, 6, 6, generator=generator), size=(48, 48),
                           mode="bicubic")
    return smooth + 0.3 * torch.randn(1, 4, 48, 48, generator=generator)


def psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    span = (reference.max() - reference.min()).item()
    return 10 * math.log10(span**2 / ((test - reference) ** 2).mean().item())


def border_gradient_ratio(image: torch.Tensor, step: int) -> float:
    """Mean |x[i+1] - x[i]| across tile borders (every `step` px) over the mean elsewhere."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    borders = [step * k - 1 for k in range(1, image.shape[-1] // step)]
    at = torch.cat([dx[borders], dy[borders]]).mean()
    mask = torch.ones_like(dx, dtype=torch.bool)
    mask[borders] = False
    elsewhere = torch.cat([dx[mask], dy[mask]]).mean()
    return (at / elsewhere).item()


def test_tiled_decode_matches_untiled_without_seams(vae, latent):
    with torch.no_grad():
        reference = vae.decode(latent)
        tiled = tiled_decode(vae, latent, tile=TILE, overlap=OVERLAP)
    assert len(tile_grid(48, 48, tile=TILE, overlap=OVERLAP)) == 9
    assert psnr(tiled, reference) >= 35
    factor = TINY_VAE.downscale
    assert border_gradient_ratio(tiled, TILE * factor) <= 1.2
    # The reference has no tile structure: the measure is not biased at those columns.
    assert border_gradient_ratio(reference, TILE * factor) <= 1.2


def test_per_tile_statistics_would_show(vae, latent):
    """Decoding tiles independently (own GroupNorm stats) is visibly worse: the test bites."""
    with torch.no_grad():
        reference = vae.decode(latent)
        out = torch.empty_like(reference)
        factor = TINY_VAE.downscale
        for tile in tile_grid(48, 48, tile=TILE, overlap=OVERLAP):
            y0, y1, x0, x1 = tile.padded
            part = vae.decode(latent[..., y0:y1, x0:x1])
            cy0, cy1, cx0, cx1 = (v * factor for v in tile.core_in_padded)
            oy0, oy1, ox0, ox1 = (v * factor for v in tile.core)
            out[..., oy0:oy1, ox0:ox1] = part[..., cy0:cy1, cx0:cx1]
    assert psnr(out, reference) < psnr(tiled_decode(vae, latent, tile=TILE, overlap=OVERLAP),
                                       reference) - 3


def test_tiled_encode_matches_untiled(vae, latent):
    with torch.no_grad():
        image = vae.decode(latent).clamp(-1, 1)
        reference = vae.encode(image).mean
        tiled = tiled_encode(vae, image, tile=32, overlap=16).mean
    assert tiled.shape == reference.shape
    assert psnr(tiled, reference) >= 35


def test_tiling_is_used_when_asked_or_when_memory_is_short(vae, latent, monkeypatch):
    settings = Settings()
    cpu = torch.device("cpu")
    assert not vae_codec.use_tiles(settings, 10**6, cpu)
    assert vae_codec.use_tiles(settings.with_overrides({"tiled_vae": True}), 10**6, cpu)
    assert vae_codec.use_tiles(settings, 10**15, cpu)  # a petabyte never fits
    assert not vae_codec.use_tiles(settings.with_overrides({"tiled_vae_auto": False}),
                                   10**15, cpu)
    # 2048² SD decode in bf16: the estimate is ComfyUI's 2178 * 64 bytes per latent px * 2.
    assert vae_codec.decode_memory_estimate((1, 4, 256, 256), torch.bfloat16) == \
        2178 * 64 * 256 * 256 * 2
    forced = settings.with_overrides({"tiled_vae": True, "tiled_vae_decoder_tile": 16,
                                      "tiled_vae_decoder_overlap": 6})
    with torch.no_grad():
        expected = tiled_decode(vae, latent, tile=16, overlap=6, refine=1)
    assert torch.equal(vae_codec.decode(vae, latent, forced), expected)
