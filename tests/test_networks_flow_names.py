"""LoRA names of full-size Flux.1 [dev], SD3.5 Large and SD3.5 Medium, built on the meta device.

Every Linear of diffusers' twin (`FluxTransformer2DModel` / `SD3Transformer2DModel`, also on
the meta device) must resolve in each diffusers spelling (`transformer.`, `lora_transformer_`,
`lycoris_`) to a layer of ours, together covering every Linear of our transformer; fused
parts get their rows (Flux dev: q/k/v 3072 rows each, a single block's MLP input the
12288 after them); every kohya name sd-scripts writes (`lora_unet_` + BFL / SAI path)
resolves; the text encoders answer to kohya's te1 / te2 / te3 and diffusers' numbering.
Counts: Flux dev has 314 Linears of ours and 504 in diffusers' layout (q/k/v/MLP split).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.models.flow_families import FLUX_DEV_FAMILY, SD35_LARGE_FAMILY, SD35_MEDIUM_FAMILY
from modules.models.flow_model import FlowModel
from modules.networks.names import NameMap
from tests.mmdit_configs import sd3_diffusers_config


def linears(module: nn.Module) -> list[str]:
    return [name for name, child in module.named_modules() if isinstance(child, nn.Linear)]


def resolved_paths(names: NameMap, twin: nn.Module) -> set[str]:
    """Our paths that the twin's Linears reach; asserts every spelling of each resolves."""
    paths = set()
    for name in linears(twin):
        underscored = name.replace(".", "_")
        found = {names.get(spelling) for spelling in (
            f"transformer.{name}", f"lora_transformer_{underscored}", f"lycoris_{underscored}")}
        assert len(found) == 1 and None not in found, name
        target = found.pop()
        assert target.component == "unet"
        paths.add(target.path)
    return paths


@pytest.fixture(scope="module")
def flux_dev():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FlowModel(family=FLUX_DEV_FAMILY)
        twin = FluxTransformer2DModel(guidance_embeds=True)
    return NameMap(model=model), model, twin


def test_flux_dev_diffusers_names_cover_every_linear(flux_dev) -> None:
    names, model, twin = flux_dev
    ours = linears(model.unet)
    assert (len(ours), len(linears(twin))) == (314, 504)
    assert resolved_paths(names, twin) == set(ours)
    rows = {part: names.get(f"transformer.single_transformer_blocks.37.{part}").rows
            for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
    assert rows == {"attn.to_q": (0, 3072), "attn.to_k": (3072, 6144),
                    "attn.to_v": (6144, 9216), "proj_mlp": (9216, None)}
    add_v = names.get("transformer.transformer_blocks.18.attn.add_v_proj")
    assert (add_v.path, add_v.rows) == ("double_blocks.18.txt_attn.qkv", (6144, 9216))
    final = names.get("transformer.norm_out.linear")
    assert final.path == "final_layer.adaLN_modulation.1" and final.swap_halves
    assert not names.get("lora_unet_final_layer_adaLN_modulation_1").swap_halves


def test_flux_dev_kohya_and_text_encoder_names(flux_dev) -> None:
    names, _, _ = flux_dev
    double = ("img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "img_mod_lin",
              "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin")
    kohya = [f"lora_unet_double_blocks_{i}_{m}" for i in range(19) for m in double]
    kohya += [f"lora_unet_single_blocks_{i}_{m}" for i in range(38)
              for m in ("linear1", "linear2", "modulation_lin")]
    kohya += ["lora_unet_img_in", "lora_unet_txt_in", "lora_unet_time_in_in_layer",
              "lora_unet_final_layer_linear", "lora_unet_guidance_in_out_layer"]
    assert all(names.get(name).rows is None for name in kohya)
    assert names.get("diffusion_model.double_blocks.0.img_attn.qkv").path == \
        "double_blocks.0.img_attn.qkv"
    assert names.get("lora_te1_text_model_encoder_layers_11_mlp_fc2").component == "clip_l"
    assert names.get("text_encoder.text_model.encoder.layers.0.self_attn.v_proj").component \
        == "clip_l"
    # Flux's T5 is kohya's te3 and diffusers' second text encoder.
    for name in ("lora_te3_encoder_block_23_layer_1_DenseReluDense_wo",
                 "text_encoder_2.encoder.block.0.layer.0.SelfAttention.o"):
        assert names.get(name).component == "t5xxl"


@pytest.mark.parametrize("family", [SD35_LARGE_FAMILY, SD35_MEDIUM_FAMILY],
                         ids=["sd35_large", "sd35_medium"])
def test_sd35_diffusers_names_cover_every_linear(family) -> None:
    from diffusers import SD3Transformer2DModel

    config = family.diffusion
    with torch.device("meta"):
        model = FlowModel(family=family)
        twin = SD3Transformer2DModel(**sd3_diffusers_config(config))
    names = NameMap(model=model)
    assert resolved_paths(names, twin) == set(linears(model.unet))
    hidden, last = config.hidden_size, config.depth - 1
    v = names.get("transformer.transformer_blocks.0.attn.add_v_proj")
    assert (v.path, v.rows) == ("joint_blocks.0.context_block.attn.qkv",
                                (2 * hidden, 3 * hidden))
    pre_only = names.get(f"transformer.transformer_blocks.{last}.norm1_context.linear")
    assert pre_only.swap_halves
    assert not names.get("transformer.transformer_blocks.0.norm1_context.linear").swap_halves
    assert names.get(f"lora_unet_joint_blocks_{last}_x_block_mlp_fc2").rows is None
    assert names.get("lora_te2_text_model_encoder_layers_0_mlp_fc1").component == "clip_g"
    assert names.get("text_encoder_3.encoder.block.0.layer.1.DenseReluDense.wi_0").component \
        == "t5xxl"
