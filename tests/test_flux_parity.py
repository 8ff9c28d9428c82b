"""Our Flux.1 transformer against diffusers' FluxTransformer2DModel on the same random weights.

Tiny [dev] (with `guidance_in`) and [schnell] configs (hidden 64, 2 heads of 32 channels,
RoPE axes (8, 12, 12), 2 double + 2 single blocks, T5 width 32, pooled width 16): our
state dict goes through diffusers' single-file converter (`tests/flux_oracle.py`) into a
`FluxTransformer2DModel` loaded with strict=True. diffusers is fed packed latents
(`FluxPipeline._pack_latents`), its image ids (`_prepare_latent_image_ids`), zero text
ids, t in [0, 1] and the guidance; its output is unpacked with `_unpack_latents`. Ours
takes and returns the [B, 16, H, W] latents.
Tolerance: max |ours - diffusers| <= 1e-5 * std(diffusers output) (float32 rounding).
"""

from __future__ import annotations

import pytest
import torch

from modules.nn.flux import (
    FLUX_DEV,
    FluxConfig,
    FluxTransformer,
    image_position_ids,
    patchify,
    tiny_flux_config,
    unpatchify,
)
from tests.flux_oracle import bfl_to_diffusers, diffusers_flux

RELATIVE_TOLERANCE = 1e-5
BATCH, TOKENS = 2, 5


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights of std 0.1 (RMS norm scales around 1), so every path shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            param.copy_(noise + 1 if name.endswith(".scale") else noise)


def _pair(config: FluxConfig) -> tuple[FluxTransformer, torch.nn.Module]:
    ours = FluxTransformer(config=config).eval()
    _randomise(ours, seed=1 if config.guidance_embed else 2)
    reference = diffusers_flux(config).eval()
    reference.load_state_dict(bfl_to_diffusers(ours.state_dict(), config), strict=True)
    return ours, reference


@pytest.fixture(scope="module", params=[True, False], ids=["dev", "schnell"])
def models(request):
    return _pair(tiny_flux_config(guidance_embed=request.param))


def _inputs(config: FluxConfig, height: int, width: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(height * 100 + width)
    return dict(
        x=torch.randn(BATCH, config.latent_channels, height, width, generator=generator),
        timesteps=torch.tensor([0.3, 0.95]),
        context=torch.randn(BATCH, TOKENS, config.context_in_dim, generator=generator),
        y=torch.randn(BATCH, config.vec_in_dim, generator=generator),
        guidance=torch.tensor([3.5, 1.5]),
    )


def _diffusers_velocity(reference, config: FluxConfig, inputs) -> torch.Tensor:
    from diffusers import FluxPipeline

    x = inputs["x"]
    batch, channels, height, width = x.shape
    output = reference(
        hidden_states=FluxPipeline._pack_latents(x, batch, channels, height, width),
        encoder_hidden_states=inputs["context"],
        pooled_projections=inputs["y"],
        timestep=inputs["timesteps"],
        img_ids=FluxPipeline._prepare_latent_image_ids(
            batch, height // 2, width // 2, x.device, x.dtype
        ),
        txt_ids=torch.zeros(inputs["context"].shape[1], 3),
        guidance=inputs["guidance"] if config.guidance_embed else None,
    ).sample
    # _unpack_latents takes the image size in pixels (8 per latent pixel).
    return FluxPipeline._unpack_latents(output, height * 8, width * 8, 8)


def _assert_close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    assert ours.shape == expected.shape
    error = (ours - expected).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * expected.std().item(), error


@pytest.mark.parametrize(("height", "width"), [(8, 8), (6, 10)])
@torch.no_grad()
def test_velocity_matches_diffusers(models, height, width) -> None:
    ours, reference = models
    inputs = _inputs(ours.config, height, width)
    expected = _diffusers_velocity(reference, ours.config, inputs)
    _assert_close(ours(**inputs), expected)


@torch.no_grad()
def test_odd_latent_is_padded_with_edge_values_and_cropped(models) -> None:
    ours, reference = models
    inputs = _inputs(ours.config, 5, 7)
    padded = dict(inputs, x=torch.nn.functional.pad(inputs["x"], (0, 1, 0, 1), mode="replicate"))
    expected = _diffusers_velocity(reference, ours.config, padded)[..., :5, :7]
    _assert_close(ours(**inputs), expected)


@torch.no_grad()
def test_scalar_timestep_and_float_guidance_broadcast(models) -> None:
    ours, _ = models
    inputs = _inputs(ours.config, 4, 4)
    per_sample = ours(**dict(inputs, timesteps=torch.full((BATCH,), 0.5),
                             guidance=torch.full((BATCH,), 2.0)))
    shared = ours(**dict(inputs, timesteps=torch.tensor(0.5), guidance=2.0))
    assert torch.equal(per_sample, shared)
    assert torch.equal(per_sample, ours(**dict(inputs, timesteps=0.5, guidance=2.0)))


@torch.no_grad()
def test_guidance_is_an_input_of_dev_only(models) -> None:
    ours, _ = models
    inputs = _inputs(ours.config, 4, 4)
    other = ours(**dict(inputs, guidance=torch.tensor([7.0, 7.0])))
    if ours.config.guidance_embed:
        assert not torch.allclose(ours(**inputs), other)
        with pytest.raises(ValueError, match="guidance"):
            ours(**dict(inputs, guidance=None))
    else:
        assert torch.equal(ours(**inputs), other)
        assert torch.equal(ours(**inputs), ours(**dict(inputs, guidance=None)))


@torch.no_grad()
def test_sliced_attention_gives_the_same_velocity(models) -> None:
    ours, _ = models
    inputs = _inputs(ours.config, 6, 6)
    expected = ours(**inputs)
    try:
        ours.set_attention_backend("sliced")
        _assert_close(ours(**inputs), expected)
    finally:
        ours.set_attention_backend("sdpa")


def test_patchify_round_trip_and_ids() -> None:
    x = torch.randn(2, 16, 4, 6)
    tokens = patchify(x)
    assert tokens.shape == (2, 6, 64)
    assert torch.equal(unpatchify(tokens, 4, 6), x)
    # Token 4 is patch row 1, column 1; its features are channel-major (c, dy, dx).
    assert torch.equal(tokens[:, 4, :4], x[:, 0, 2:4, 2:4].flatten(1))
    ids = image_position_ids(2, 4, 6)
    assert ids.shape == (2, 6, 3)
    assert ids[0, 4].tolist() == [0.0, 1.0, 1.0]


def test_config_checks_head_split() -> None:
    assert FLUX_DEV.head_dim == 128 and FLUX_DEV.latent_channels == 16
    with pytest.raises(ValueError, match="axes_dim"):
        FluxConfig(hidden_size=64, num_heads=2, axes_dim=(8, 8, 8))
    with pytest.raises(ValueError, match="num_heads"):
        FluxConfig(hidden_size=64, num_heads=3)


@torch.no_grad()
def test_bfloat16_weights_take_float32_latents() -> None:
    """Computed in the weights' dtype, returned in the input's.

    Tolerance: bf16 rounding through 4 blocks, max error <= 10% of std (measured 4%).
    """
    ours, _ = _pair(tiny_flux_config(guidance_embed=True))
    inputs = _inputs(ours.config, 4, 6)
    expected = ours(**inputs)
    half = ours.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16
    out = half(**inputs)
    assert out.dtype == torch.float32
    assert (out - expected).abs().max().item() <= 0.1 * expected.std().item()
