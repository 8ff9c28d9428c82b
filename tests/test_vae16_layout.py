"""The full-size 16-channel autoencoder has exactly the tensors of real SD3.5 / Flux.1 files.

Built on the meta device from `SD3_VAE` / `FLUX_VAE` and compared with BFL's
`ae.safetensors` layout (`tests/fixtures/flux1_ae.tsv`, bare `encoder.*` / `decoder.*`
names) and the `first_stage_model.` part of the SD3.5 Large and Medium single files: every
key is a parameter of that shape, nothing left over. Parameter count: 83,819,683
(the SD1 VAE minus its two 1x1 convolutions, with 16 instead of 4 latent channels).
"""

from __future__ import annotations

import pytest
import torch

from modules.nn.autoencoder import AutoencoderKL
from modules.nn.configs import FLUX_VAE, SD3_VAE
from tests.helpers.layouts import assert_same_layout, fixture_shapes

AE_PARAMETERS = 83_819_683


def _meta_vae(config) -> AutoencoderKL:
    with torch.device("meta"):
        return AutoencoderKL(config=config)


@pytest.mark.parametrize(("config", "fixture", "prefix"), [
    pytest.param(FLUX_VAE, "flux1_ae.tsv", "", id="flux_ae"),
    pytest.param(SD3_VAE, "sd35_large_single_file.tsv", "first_stage_model.", id="sd35_large"),
    pytest.param(SD3_VAE, "sd35_medium_single_file.tsv", "first_stage_model.", id="sd35_medium"),
])
def test_vae16_layout_matches_file(config, fixture, prefix) -> None:
    expected = fixture_shapes(fixture, prefix)
    if not prefix:
        assert all(key.startswith(("encoder.", "decoder.")) for key in expected)
    assert len(expected) == 244
    model = _meta_vae(config)
    assert_same_layout(model, expected)
    assert sum(p.numel() for p in model.parameters()) == AE_PARAMETERS


def test_flux_and_sd3_latent_statistics() -> None:
    assert (SD3_VAE.scale_factor, SD3_VAE.shift_factor) == (1.5305, 0.0609)
    assert (FLUX_VAE.scale_factor, FLUX_VAE.shift_factor) == (0.3611, 0.1159)
    assert SD3_VAE.downscale == FLUX_VAE.downscale == 8
