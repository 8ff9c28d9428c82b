"""Our MMDiT against diffusers' SD3Transformer2DModel on the same random weights.

For the tiny SD3, SD3.5 Large and SD3.5 Medium (MMDiT-X) styles (tests/mmdit_configs.py),
our state dict (Stability AI's names) goes through diffusers' own single-file converter
`convert_sd3_transformer_checkpoint_to_diffusers`, is loaded strictly into
`SD3Transformer2DModel`, and both models run the same latent, timesteps (σ·1000),
text tokens and pooled vector. The latent is 10×6 on an 8×8-patch grid, so the position
embedding is a non-trivial, off-centre-rounded crop.
Tolerance: max |ours − diffusers| ≤ 1e-5 · max |diffusers| (float32 rounding; the two
implementations order the joint tokens and some sums differently).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from modules.nn.attention import set_attention_backend
from tests.helpers.parity import assert_close
from tests.mmdit_configs import TINY_MMDITS, random_mmdit, sd3_diffusers_config

RELATIVE_TOLERANCE = 1e-5
_assert_close = partial(assert_close, tolerance=RELATIVE_TOLERANCE)


def _pair(config, seed: int = 0):
    """Our random MMDiT and diffusers' transformer loaded with the converted weights."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    ours = random_mmdit(config, seed)
    state = {f"model.diffusion_model.{k}": v.clone() for k, v in ours.state_dict().items()}
    converted = convert_sd3_transformer_checkpoint_to_diffusers(state)
    assert state == {}, "the converter left keys unconverted"
    reference = SD3Transformer2DModel(**sd3_diffusers_config(config)).eval()
    reference.load_state_dict(converted, strict=True)
    return ours, reference


def _inputs(config, height: int = 10, width: int = 6, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(2, config.in_channels, height, width, generator=generator),
        timesteps=torch.tensor([999.0, 250.5]),
        context=torch.randn(2, 7, config.context_in_channels, generator=generator),
        y=torch.randn(2, config.adm_in_channels, generator=generator),
    )


def _reference(reference, inputs: dict, **kwargs) -> torch.Tensor:
    return reference(hidden_states=inputs["x"], encoder_hidden_states=inputs["context"],
                     pooled_projections=inputs["y"], timestep=inputs["timesteps"],
                     return_dict=False, **kwargs)[0]


@pytest.mark.parametrize("name", list(TINY_MMDITS))
def test_mmdit_matches_diffusers(name: str) -> None:
    config = TINY_MMDITS[name]
    ours, reference = _pair(config)
    inputs = _inputs(config)
    with torch.no_grad():
        _assert_close(ours(**inputs), _reference(reference, inputs))


def test_skip_layers_match_diffusers() -> None:
    """Skip-layer guidance: block 1 left out in both models."""
    config = TINY_MMDITS["sd35_medium"]
    ours, reference = _pair(config, seed=3)
    inputs = _inputs(config, height=8, width=8)
    with torch.no_grad():
        expected = _reference(reference, inputs, skip_layers=[1])
        _assert_close(ours(**inputs, skip_layers=(1,)), expected)


def test_scalar_timestep_and_sliced_attention() -> None:
    """A 0-d timestep is broadcast over the batch; the sliced kernel gives the same output."""
    config = TINY_MMDITS["sd35_large"]
    ours, reference = _pair(config, seed=5)
    inputs = _inputs(config) | {"timesteps": torch.tensor(500.0)}
    with torch.no_grad():
        expected = _reference(reference, inputs | {"timesteps": torch.tensor([500.0, 500.0])})
        _assert_close(ours(**inputs), expected)
        set_attention_backend(ours, "sliced")
        _assert_close(ours(**inputs), expected)


def test_odd_latent_is_padded_and_cropped() -> None:
    """An odd-sized latent runs (replicate-padded to whole patches) and keeps its size."""
    config = TINY_MMDITS["sd3"]
    ours = random_mmdit(config)
    inputs = _inputs(config, height=9, width=7)
    with torch.no_grad():
        out = ours(**inputs)
    assert out.shape == inputs["x"].shape and torch.isfinite(out).all()


def test_latent_larger_than_position_grid_is_refused() -> None:
    config = TINY_MMDITS["sd3"]
    ours = random_mmdit(config)
    with pytest.raises(ValueError, match="position grid"), torch.no_grad():
        ours(**_inputs(config, height=18, width=4))


def test_bfloat16_weights_take_float32_inputs() -> None:
    """bf16 weights (as the files ship), float32 inputs: a bf16 result near float32's
    (within 3e-2 · max, bf16 having 8 mantissa bits)."""
    config = TINY_MMDITS["sd35_medium"]
    ours = random_mmdit(config)
    inputs = _inputs(config, height=8, width=8)
    with torch.no_grad():
        expected = ours(**inputs)
        out = ours.to(torch.bfloat16)(**inputs)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).abs().max() <= 3e-2 * expected.abs().max()
