"""Our LDM AutoencoderKL against diffusers' AutoencoderKL on the same random weights.

diffusers' weights are renamed with `vae_diffusers_to_ldm` (reversed decoder levels,
Linear attention projections -> 1x1 convolutions), loaded with strict=True, and both
models encode and decode the same tensors. Tolerance: max |ours - diffusers| <=
1e-5 * max |diffusers| (float32 rounding).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from modules.models.diffusers_keys import UnmappedKeysError, map_vae_keys, vae_diffusers_to_ldm
from modules.nn.autoencoder import AutoencoderKL, DiagonalGaussian
from tests.diffusers_configs import vae_diffusers_config
from tests.helpers.parity import assert_close, perturb
from tests.tiny import TINY_VAE

RELATIVE_TOLERANCE = 1e-5
_assert_close = partial(assert_close, tolerance=RELATIVE_TOLERANCE)
# diffusers < 0.14 spelled the attention projections differently.
OLD_ATTENTION_SPELLING = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _reference(seed: int = 0):
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    torch.manual_seed(seed)
    model = DiffusersAutoencoderKL(**vae_diffusers_config(TINY_VAE)).eval()
    # Move every weight off its default init so norms and biases matter too.
    perturb(model, seed)
    return model


def _ours_from(state: dict) -> AutoencoderKL:
    model = AutoencoderKL(config=TINY_VAE).eval()
    model.load_state_dict(vae_diffusers_to_ldm(state, TINY_VAE), strict=True)
    return model


@pytest.fixture(scope="module")
def models():
    reference = _reference()
    return reference, _ours_from(reference.state_dict())


def test_encode_matches_diffusers(models) -> None:
    reference, ours = models
    image = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(image).latent_dist
        actual = ours.encode(image)
    assert actual.mean.shape == (2, TINY_VAE.embed_dim, 16, 12)
    _assert_close(actual.mean, expected.mean)
    _assert_close(actual.logvar, expected.logvar)
    _assert_close(actual.std, expected.std)


def test_decode_matches_diffusers(models) -> None:
    reference, ours = models
    latent = torch.randn(2, TINY_VAE.embed_dim, 8, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.decode(latent).sample
        actual = ours.decode(latent)
    assert actual.shape == (2, 3, 16, 12)
    _assert_close(actual, expected)


def test_sliced_attention_backend_agrees(models) -> None:
    _, ours = models
    latent = torch.randn(1, TINY_VAE.embed_dim, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sdpa = ours.decode(latent)
        ours.set_attention_backend("sliced")
        sliced = ours.decode(latent)
        ours.set_attention_backend("sdpa")
    _assert_close(sliced, sdpa)


def test_old_attention_spelling_maps_to_the_same_weights(models) -> None:
    reference, ours = models
    old = {}
    for key, tensor in reference.state_dict().items():
        for new, legacy in OLD_ATTENTION_SPELLING.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
        old[key] = tensor
    assert any(".query." in key for key in old)
    converted = vae_diffusers_to_ldm(old, TINY_VAE)
    for key, tensor in ours.state_dict().items():
        assert torch.equal(converted[key], tensor), key


def test_diagonal_gaussian_sample_uses_given_noise() -> None:
    moments = torch.randn(1, 8, 2, 2, generator=torch.Generator().manual_seed(4))
    moments[:, 4:] = moments[:, 4:].clamp(-3, 3)
    posterior = DiagonalGaussian(moments)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(5))
    expected = moments[:, :4] + torch.exp(0.5 * moments[:, 4:]) * noise
    assert torch.allclose(posterior.sample(noise), expected, atol=1e-6)
    assert torch.equal(posterior.mode(), moments[:, :4])
    # LDM clamps the log-variance to [-30, 20].
    assert DiagonalGaussian(torch.full((1, 8, 1, 1), 50.0)).logvar.max().item() == 20.0


def test_decoder_runs_alone(models) -> None:
    _, ours = models
    latent = torch.randn(1, TINY_VAE.embed_dim, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        alone = ours.decoder(ours.post_quant_conv(latent))
        full = ours.decode(latent)
    assert torch.equal(alone, full)


def test_vae_keys_report_unknown_and_duplicates(models) -> None:
    reference, _ = models
    state = dict(reference.state_dict())
    state["encoder.mid_block.attentions.0.query.weight"] = state[
        "encoder.mid_block.attentions.0.to_q.weight"
    ]
    state["decoder.up_blocks.0.mystery.weight"] = torch.zeros(1)
    mapping = map_vae_keys(state, TINY_VAE)
    assert set(mapping.unmapped) == {
        "encoder.mid_block.attentions.0.query.weight",
        "decoder.up_blocks.0.mystery.weight",
    }
    with pytest.raises(UnmappedKeysError):
        vae_diffusers_to_ldm(state, TINY_VAE)
