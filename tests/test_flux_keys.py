"""`diffusers_to_bfl` is the inverse of diffusers' Flux single-file converter.

Round trip on tiny random [dev] and [schnell] transformers: our state dict (BFL names) ->
diffusers' `convert_flux_transformer_checkpoint_to_diffusers` (`tests/flux_oracle.py`)
-> a strict load into `FluxTransformer2DModel` -> its state dict -> `diffusers_to_bfl`
gives back exactly our tensors (bitwise), including the fused q/k/v(/mlp) linears and
the swapped halves of the final adaLN. The full-size layouts round-trip by name and
shape on the meta device.
"""

from __future__ import annotations

import pytest
import torch

from modules.models.diffusers_keys import UnmappedKeysError
from modules.models.flux_keys import (
    bfl_target,
    diffusers_to_bfl,
    flux_config_from_shapes,
    part_rows,
)
from modules.nn.flux import FluxTransformer, tiny_flux_config
from tests.flux_oracle import bfl_to_diffusers, diffusers_flux
from tests.helpers.layouts import fixture_shapes


def _random_model(guidance_embed: bool) -> FluxTransformer:
    torch.manual_seed(3)
    model = FluxTransformer(config=tiny_flux_config(guidance_embed=guidance_embed))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["dev", "schnell"])
def diffusers_state(request):
    ours = _random_model(request.param)
    reference = diffusers_flux(ours.config)
    reference.load_state_dict(bfl_to_diffusers(ours.state_dict(), ours.config), strict=True)
    return ours, reference.state_dict()


def _assert_same_tensors(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert different == []


def test_round_trip_gives_back_our_weights(diffusers_state) -> None:
    ours, state = diffusers_state
    converted = diffusers_to_bfl(state)
    _assert_same_tensors(converted, ours.state_dict())
    fresh = FluxTransformer(config=ours.config)
    fresh.load_state_dict(converted, strict=True)


def test_pipeline_prefix_is_accepted(diffusers_state) -> None:
    ours, state = diffusers_state
    prefixed = {f"transformer.{key}": tensor for key, tensor in state.items()}
    _assert_same_tensors(diffusers_to_bfl(prefixed), ours.state_dict())


def test_unknown_keys_and_incomplete_qkv_are_reported(diffusers_state) -> None:
    _, state = diffusers_state
    with pytest.raises(UnmappedKeysError) as error:
        diffusers_to_bfl({**state, "pos_embed.weight": torch.zeros(1)})
    assert error.value.keys == ("pos_embed.weight",)
    incomplete = {k: v for k, v in state.items() if k != "transformer_blocks.1.attn.to_k.bias"}
    with pytest.raises(UnmappedKeysError, match="double_blocks.1.img_attn.qkv.bias"):
        diffusers_to_bfl(incomplete)
    without_mlp = {k: v for k, v in state.items()
                   if k != "single_transformer_blocks.0.proj_mlp.weight"}
    with pytest.raises(UnmappedKeysError, match="single_blocks.0.linear1.weight"):
        diffusers_to_bfl(without_mlp)


def test_each_diffusers_linear_is_a_row_slice_of_its_bfl_linear(diffusers_state) -> None:
    """`bfl_target` + `part_rows` place every diffusers weight inside ours (for LoRA)."""
    ours, state = diffusers_state
    our_state = ours.state_dict()
    hidden = ours.config.hidden_size
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        target = bfl_target(module)
        if target.module == "final_layer.adaLN_modulation.1":
            continue  # the one layer whose rows are reordered, not sliced
        our_param = "scale" if target.module.endswith("_norm") else param
        rows = our_state[f"{target.module}.{our_param}"][part_rows(target, hidden)]
        assert torch.equal(rows, tensor), key
    assert bfl_target("transformer.single_transformer_blocks.1.proj_mlp") == (
        "single_blocks.1.linear1", 3, 4)
    assert bfl_target("pos_embed") is None


def test_tiny_config_is_read_off_its_shapes(diffusers_state) -> None:
    ours, _ = diffusers_state
    shapes = {key: tuple(t.shape) for key, t in ours.state_dict().items()}
    assert flux_config_from_shapes(shapes, axes_dim=(8, 12, 12)) == ours.config
    with pytest.raises(ValueError, match="32 channels"):
        flux_config_from_shapes(shapes)


def _fixture_tensors(name: str) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in fixture_shapes(name).items()}


@pytest.mark.parametrize("fixture", ["flux1_dev_transformer_bfl.tsv",
                                     "flux1_schnell_transformer_bfl.tsv"])
def test_full_size_layout_round_trips(fixture) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
    )

    original = _fixture_tensors(fixture)
    converted = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    back = diffusers_to_bfl(converted)
    assert sorted(back) == sorted(original)
    assert {k: tuple(v.shape) for k, v in back.items()} == {
        k: tuple(v.shape) for k, v in original.items()
    }
