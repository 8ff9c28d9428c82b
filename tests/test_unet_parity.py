"""Our LDM U-Net against diffusers' UNet2DConditionModel on the same random weights.

For every tiny family (SD1 conv proj + fixed head count, SD2 linear proj + 16-channel
heads, SDXL with the ADM vector, the refiner), diffusers' weights are renamed with
`unet_diffusers_to_ldm`, loaded with strict=True, and both models run the same inputs.
Tolerance: max |ours - diffusers| <= 1e-5 * max |diffusers| (float32 rounding; the two
implementations order some sums differently).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from modules.models.diffusers_keys import UnmappedKeysError, unet_diffusers_to_ldm
from modules.nn.attention import (
    AttentionBackend,
    resolve_backend,
    sdpa_attention,
    sliced_attention,
    xformers_available,
)
from modules.nn.timestep import timestep_embedding
from modules.nn.unet import ControlResiduals, UNetModel
from tests.diffusers_configs import ADM_TIME_EMBED_DIM, unet_diffusers_config
from tests.helpers.parity import assert_close, perturb
from tests.tiny import TINY_FAMILIES, TINY_SD15, TINY_SDXL

RELATIVE_TOLERANCE = 1e-5
_assert_close = partial(assert_close, tolerance=RELATIVE_TOLERANCE)
# Number of SDXL time ids: original size, crop, target size (base); size, crop, score (refiner).
TIME_IDS = {"sdxl": 6, "sdxl_refiner": 5}


def _pair(family, seed: int = 0):
    """A diffusers U-Net with random weights and our U-Net loaded from its renamed state dict."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    reference = UNet2DConditionModel(**unet_diffusers_config(family.unet)).eval()
    perturb(reference, seed)  # every weight off its default init
    ours = UNetModel(config=family.unet).eval()
    ours.load_state_dict(unet_diffusers_to_ldm(reference.state_dict(), family.unet), strict=True)
    return reference, ours


def _inputs(family, height: int = 16, width: int = 16, seed: int = 1) -> dict:
    """Latents, timesteps, context and (SDXL) both forms of the ADM conditioning."""
    generator = torch.Generator().manual_seed(seed)
    cfg = family.unet
    inputs = dict(
        x=torch.randn(2, cfg.in_channels, height, width, generator=generator),
        timesteps=torch.tensor([999.0, 250.5]),
        context=torch.randn(2, 7, cfg.context_dim, generator=generator),
        y=None,
        added_cond_kwargs=None,
    )
    if cfg.adm_in_channels is not None:
        count = TIME_IDS[family.adm]
        text = torch.randn(2, cfg.adm_in_channels - count * ADM_TIME_EMBED_DIM, generator=generator)
        time_ids = torch.tensor(
            [[64.0, 48.0, 0.0, 8.0, 64.0, 48.0][:count], [32.0, 32.0, 4.0, 0.0, 2.5, 1.0][:count]]
        )
        # Our y: pooled text, then 256 sinusoidal channels per time id, in order.
        fourier = timestep_embedding(time_ids.flatten(), ADM_TIME_EMBED_DIM).reshape(2, -1)
        inputs["y"] = torch.cat([text, fourier], dim=-1)
        inputs["added_cond_kwargs"] = {"text_embeds": text, "time_ids": time_ids}
    return inputs


@pytest.mark.parametrize("family", TINY_FAMILIES, ids=lambda f: f.name)
def test_unet_matches_diffusers(family) -> None:
    reference, ours = _pair(family)
    inputs = _inputs(family)
    with torch.no_grad():
        expected = reference(
            inputs["x"],
            inputs["timesteps"],
            inputs["context"],
            added_cond_kwargs=inputs["added_cond_kwargs"],
        ).sample
        actual = ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"])
    _assert_close(actual, expected)


def test_unet_odd_latent_size_matches_diffusers() -> None:
    """Sizes not divisible by the down factor upsample to the skip's size, as diffusers does."""
    reference, ours = _pair(TINY_SDXL)
    inputs = _inputs(TINY_SDXL, height=15, width=11)
    with torch.no_grad():
        expected = reference(
            inputs["x"],
            inputs["timesteps"],
            inputs["context"],
            added_cond_kwargs=inputs["added_cond_kwargs"],
        ).sample
        actual = ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"])
    _assert_close(actual, expected)


@pytest.mark.parametrize("family", [TINY_SD15, TINY_SDXL], ids=lambda f: f.name)
def test_control_residuals_match_diffusers(family) -> None:
    reference, ours = _pair(family)
    inputs = _inputs(family)
    generator = torch.Generator().manual_seed(7)
    # Record each input block's output shape to make residuals of the right shapes.
    shapes = []
    hooks = [
        block.register_forward_hook(lambda m, a, out: shapes.append(out.shape))
        for block in ours.input_blocks
    ]
    middle_shape = []
    hooks.append(
        ours.middle_block.register_forward_hook(lambda m, a, out: middle_shape.append(out.shape))
    )
    with torch.no_grad():
        plain = ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"])
    for hook in hooks:
        hook.remove()
    control = ControlResiduals(
        down=tuple(torch.randn(shape, generator=generator) for shape in shapes),
        middle=torch.randn(middle_shape[0], generator=generator),
    )
    with torch.no_grad():
        expected = reference(
            inputs["x"],
            inputs["timesteps"],
            inputs["context"],
            added_cond_kwargs=inputs["added_cond_kwargs"],
            down_block_additional_residuals=control.down,
            mid_block_additional_residual=control.middle,
        ).sample
        actual = ours(
            inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"], control=control
        )
    _assert_close(actual, expected)
    assert (actual - plain).abs().max() > 1e-2, "the residuals changed nothing"


def test_control_residuals_count_is_checked() -> None:
    _, ours = _pair(TINY_SD15)
    inputs = _inputs(TINY_SD15)
    bad = ControlResiduals(down=(torch.zeros(1),), middle=torch.zeros(1))
    with pytest.raises(ValueError, match="control.down"):
        ours(inputs["x"], inputs["timesteps"], inputs["context"], control=bad)


def test_adm_vector_is_required_exactly_for_sdxl() -> None:
    _, sdxl = _pair(TINY_SDXL)
    inputs = _inputs(TINY_SDXL)
    with pytest.raises(ValueError, match="ADM"):
        sdxl(inputs["x"], inputs["timesteps"], inputs["context"])
    _, sd1 = _pair(TINY_SD15)
    inputs = _inputs(TINY_SD15)
    with pytest.raises(ValueError, match="ADM"):
        sd1(inputs["x"], inputs["timesteps"], inputs["context"], torch.zeros(2, 8))


def test_attention_backends_agree_in_the_unet() -> None:
    _, ours = _pair(TINY_SD15)
    inputs = _inputs(TINY_SD15)
    with torch.no_grad():
        assert ours.set_attention_backend("sdpa") is AttentionBackend.SDPA
        sdpa = ours(inputs["x"], inputs["timesteps"], inputs["context"])
        assert ours.set_attention_backend("sliced") is AttentionBackend.SLICED
        sliced = ours(inputs["x"], inputs["timesteps"], inputs["context"])
    _assert_close(sliced, sdpa)


def test_attention_backend_is_per_model() -> None:
    _, first = _pair(TINY_SD15)
    _, second = _pair(TINY_SD15)
    first.set_attention_backend("sliced")
    backends = {m.attention_backend for m in second.modules() if hasattr(m, "attention_backend")}
    assert backends == {AttentionBackend.SDPA}


def test_sliced_attention_matches_sdpa_over_many_chunks() -> None:
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 37, 8, generator=generator) for _ in range(3))
    expected = sdpa_attention(q, k, v)
    # A budget of 5 queries' scores forces 8 chunks, the last one short.
    actual = sliced_attention(q, k, v, slice_bytes=5 * 2 * 3 * 37 * 4)
    assert (actual - expected).abs().max() < 1e-6


def test_backend_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("flash")
    if not xformers_available():
        assert resolve_backend("auto") is AttentionBackend.SDPA
        with pytest.raises(ValueError, match="not installed"):
            resolve_backend("xformers")


def test_unet_computes_in_weight_dtype_and_returns_input_dtype() -> None:
    _, ours = _pair(TINY_SD15)
    inputs = _inputs(TINY_SD15)
    with torch.no_grad():
        single = ours(inputs["x"], inputs["timesteps"], inputs["context"])
        ours.double()
        double = ours(inputs["x"], inputs["timesteps"], inputs["context"])
    assert double.dtype == torch.float32
    _assert_close(double, single)


def test_unknown_diffusers_keys_are_reported() -> None:
    reference, _ = _pair(TINY_SD15)
    state = dict(reference.state_dict())
    state["down_blocks.0.mystery.weight"] = torch.zeros(1)
    state["down_blocks.0.resnets.0.bogus.weight"] = torch.zeros(1)
    with pytest.raises(UnmappedKeysError) as error:
        unet_diffusers_to_ldm(state, TINY_SD15.unet)
    assert error.value.keys == (
        "down_blocks.0.mystery.weight",
        "down_blocks.0.resnets.0.bogus.weight",
    )


def test_scalar_timestep_is_broadcast() -> None:
    _, ours = _pair(TINY_SD15)
    inputs = _inputs(TINY_SD15)
    with torch.no_grad():
        batched = ours(inputs["x"], torch.tensor([500.0, 500.0]), inputs["context"])
        scalar = ours(inputs["x"], torch.tensor(500.0), inputs["context"])
    assert torch.equal(batched, scalar)
