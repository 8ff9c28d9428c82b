"""The 16-channel autoencoder of SD3 / Flux.1 against diffusers' AutoencoderKL.

A tiny config with 16 latent channels and no `quant_conv` / `post_quant_conv`
(`use_quant_conv=False`) is compared with diffusers' `AutoencoderKL(latent_channels=16,
use_quant_conv=False, use_post_quant_conv=False)` on the same random weights (renamed
with `vae_diffusers_to_ldm`, loaded strictly). Tolerance: max |ours - diffusers| <=
1e-5 * max |diffusers| (float32 rounding). Also: the latent scale/shift of the family
configs round-trips through `vae_codec`, and tiled decode/encode of a 16-channel VAE
stays within 35 dB PSNR of the untiled result (the bar of tests/test_vae_tiled.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from modules.models.diffusers_keys import vae_diffusers_to_ldm
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.configs import FLUX_VAE, SD3_VAE, VAEConfig
from modules.nn.vae_tiled import tiled_decode, tiled_encode
from modules.pipeline import vae_codec
from tests.diffusers_configs import vae_diffusers_config
from tests.helpers.parity import assert_close, perturb

RELATIVE_TOLERANCE = 1e-5
_assert_close = partial(assert_close, tolerance=RELATIVE_TOLERANCE)
TINY_VAE16 = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16,
                       use_quant_conv=False, scale_factor=1.5305, shift_factor=0.0609)


def _reference():
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    torch.manual_seed(0)
    kwargs = vae_diffusers_config(TINY_VAE16)
    model = DiffusersAutoencoderKL(**kwargs, shift_factor=TINY_VAE16.shift_factor,
                                   use_quant_conv=False, use_post_quant_conv=False).eval()
    # Move every weight off its default init so norms and biases matter too.
    perturb(model, 0)
    return model


@pytest.fixture(scope="module")
def models():
    reference = _reference()
    assert not any("quant_conv" in key for key in reference.state_dict())
    ours = AutoencoderKL(config=TINY_VAE16).eval()
    ours.load_state_dict(vae_diffusers_to_ldm(reference.state_dict(), TINY_VAE16), strict=True)
    return reference, ours


def test_no_quant_convs_and_dtype() -> None:
    model = AutoencoderKL(config=TINY_VAE16)
    assert not any("quant_conv" in key for key in model.state_dict())
    assert model.to(torch.float16).dtype == torch.float16


def test_encode_matches_diffusers(models) -> None:
    reference, ours = models
    image = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(image).latent_dist
        actual = ours.encode(image)
    assert actual.mean.shape == (2, 16, 16, 12)
    _assert_close(actual.mean, expected.mean)
    _assert_close(actual.logvar, expected.logvar)


def test_decode_matches_diffusers(models) -> None:
    reference, ours = models
    latent = torch.randn(2, 16, 8, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.decode(latent).sample
        actual = ours.decode(latent)
    assert actual.shape == (2, 3, 16, 12)
    _assert_close(actual, expected)


@pytest.mark.parametrize("config", [SD3_VAE, FLUX_VAE], ids=["sd3", "flux"])
def test_family_latents_are_shifted_then_scaled(models, config) -> None:
    """vae_codec: latent = (z - shift) * scale on encode, z = latent / scale + shift on decode."""
    reference, ours = models
    loaded = SimpleNamespace(vae=ours, family=SimpleNamespace(vae=config))
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        latents = vae_codec.encode_images(loaded, image)
        z = reference.encode(image).latent_dist.mode()
        _assert_close(latents, (z - config.shift_factor) * config.scale_factor)
        decoded = vae_codec.decode(ours, latents / config.scale_factor + config.shift_factor)
        _assert_close(decoded, reference.decode(z).sample)
    assert len(vae_codec.decode_latents(loaded, latents)) == 1


def _psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    span = (reference.max() - reference.min()).item()
    return 10 * math.log10(span**2 / ((test - reference) ** 2).mean().item())


def test_tiled_vae_works_for_16_channels(models) -> None:
    _, ours = models
    generator = torch.Generator().manual_seed(4)
    smooth = F.interpolate(torch.randn(1, 16, 6, 6, generator=generator), size=(48, 48),
                           mode="bicubic")
    latent = smooth + 0.3 * torch.randn(1, 16, 48, 48, generator=generator)
    with torch.no_grad():
        reference = ours.decode(latent)
        tiled = tiled_decode(ours, latent, tile=16, overlap=6)
        assert _psnr(tiled, reference) >= 35
        image = reference.clamp(-1, 1)
        encoded = ours.encode(image).mean
        tiled_mean = tiled_encode(ours, image, tile=32, overlap=16).mean
    assert tiled_mean.shape == encoded.shape == (1, 16, 48, 48)
    assert _psnr(tiled_mean, encoded) >= 35


def test_sd1_config_is_unchanged() -> None:
    assert VAEConfig().use_quant_conv and VAEConfig().shift_factor == 0.0
    four = replace(TINY_VAE16, use_quant_conv=True, z_channels=4, embed_dim=4)
    assert "post_quant_conv.weight" in AutoencoderKL(config=four).state_dict()
