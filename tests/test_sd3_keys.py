"""diffusers' SD3 transformer layout -> Stability AI's MMDiT names (`modules/models/sd3_keys.py`).

Round trip: our state dict -> diffusers' own `convert_sd3_transformer_checkpoint_to_diffusers`
-> `diffusers_to_sai` gives back exactly our tensors (bit-equal), for the tiny SD3, SD3.5
Large and SD3.5 Medium styles and, on the meta device, for the full-size SD3.5 layouts of
the fixtures. A random diffusers model's own state dict, mapped, loads strictly into our
MMDiT and gives its output (tolerance 1e-5 · max |diffusers|, float32 rounding).
"""

from __future__ import annotations

import pytest
import torch

from modules.models.diffusers_keys import UnmappedKeysError
from modules.models.sd3_keys import Target, diffusers_to_sai, sai_target
from modules.nn.mmdit import MMDiT
from tests.helpers.layouts import fixture_shapes
from tests.mmdit_configs import TINY_MMDITS, random_mmdit, sd3_diffusers_config


def _to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import (
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    return convert_sd3_transformer_checkpoint_to_diffusers(dict(state))


@pytest.mark.parametrize("name", list(TINY_MMDITS))
def test_round_trip_through_diffusers_converter(name: str) -> None:
    ours = random_mmdit(TINY_MMDITS[name]).state_dict()
    back = diffusers_to_sai(_to_diffusers(ours))
    assert sorted(back) == sorted(ours)
    assert all(torch.equal(back[key], ours[key]) for key in ours)


@pytest.mark.parametrize("fixture", ["sd35_large_single_file.tsv", "sd35_medium_single_file.tsv"])
def test_full_size_round_trip_on_meta(fixture: str) -> None:
    shapes = fixture_shapes(fixture, "model.diffusion_model.")
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    back = diffusers_to_sai(_to_diffusers(state))
    assert {key: tuple(t.shape) for key, t in back.items()} == shapes


def test_diffusers_model_loads_into_ours() -> None:
    """A diffusers transformer's own weights, mapped, run the same in our MMDiT."""
    from diffusers import SD3Transformer2DModel

    config = TINY_MMDITS["sd35_medium"]
    torch.manual_seed(0)
    reference = SD3Transformer2DModel(**sd3_diffusers_config(config)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    ours = MMDiT(config=config).eval()
    ours.load_state_dict(diffusers_to_sai(reference.state_dict()), strict=True)
    x, context = torch.randn(2, 16, 8, 6), torch.randn(2, 5, config.context_in_channels)
    y, t = torch.randn(2, config.adm_in_channels), torch.tensor([900.0, 30.0])
    with torch.no_grad():
        expected = reference(hidden_states=x, encoder_hidden_states=context,
                             pooled_projections=y, timestep=t, return_dict=False)[0]
        out = ours(x, t, context, y)
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_lora_module_targets() -> None:
    """Module-level targets, as a LoRA on diffusers' names needs them."""
    assert sai_target("transformer_blocks.4.attn.to_k", last_block=23) == Target(
        "joint_blocks.4.x_block.attn.qkv", 1, 3)
    assert sai_target("transformer_blocks.2.attn.add_v_proj", last_block=23) == Target(
        "joint_blocks.2.context_block.attn.qkv", 2, 3)
    assert sai_target("transformer_blocks.0.attn2.to_out.0", last_block=23) == Target(
        "joint_blocks.0.x_block.attn2.proj")
    assert sai_target("transformer_blocks.23.norm1_context.linear", last_block=23).swap_halves
    assert not sai_target("transformer_blocks.22.norm1_context.linear", last_block=23).swap_halves
    assert sai_target("norm_out.linear", last_block=23).swap_halves
    assert sai_target("transformer_blocks.0.attn.to_qkv", last_block=23) is None


def test_depth_decides_the_pre_only_block() -> None:
    """A partial dict: without `depth` its highest block counts as the last one."""
    weight = torch.arange(8.0).reshape(8, 1)
    state = {"transformer_blocks.1.norm1_context.linear.weight": weight}
    key = "joint_blocks.1.context_block.adaLN_modulation.1.weight"
    assert torch.equal(diffusers_to_sai(state, depth=3)[key], weight)
    assert torch.equal(diffusers_to_sai(state)[key], torch.cat([weight[4:], weight[:4]]))


def test_unknown_and_incomplete_keys_are_reported() -> None:
    with pytest.raises(UnmappedKeysError) as error:
        diffusers_to_sai({"transformer_blocks.0.attn.to_q.weight": torch.zeros(2, 2),
                          "image_proj.proj.weight": torch.zeros(1)})
    assert "image_proj.proj.weight" in error.value.keys
    assert "joint_blocks.0.x_block.attn.qkv.weight (parts)" in error.value.keys
