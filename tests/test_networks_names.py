"""LoRA names map onto our modules: the real kohya SD1.5 layout, SDXL and PEFT spellings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modules.models import families as F
from modules.models.sd_model import StableDiffusionModel
from modules.networks.files import group_tensors, split_key
from modules.networks.names import NameMap
from tests.tiny import TINY_SDXL

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sd15_lora_kohya_rank4_keys.tsv"


def fixture_groups() -> dict[str, dict[str, tuple[int, ...]]]:
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for line in FIXTURE.read_text().splitlines()[1:]:
        key, shape, _ = line.split("\t")
        name, suffix = key.split(".", 1)
        dims = tuple(int(x) for x in shape.strip("[]").split(",") if x)
        groups.setdefault(name, {})[suffix] = dims
    return groups


@pytest.fixture(scope="module")
def sd15_names() -> NameMap:
    with torch.device("meta"):
        model = StableDiffusionModel(family=F.SD15)
    return NameMap(model=model)


def test_every_group_of_the_real_kohya_file_maps_with_matching_shapes(sd15_names):
    groups = fixture_groups()
    assert len(groups) == 264
    unmapped = [name for name in groups if sd15_names.get(name) is None]
    assert unmapped == []
    for name, shapes in groups.items():
        target = sd15_names.get(name)
        down, up = shapes["lora_down.weight"], shapes["lora_up.weight"]
        assert up[0] == target.weight_shape[0] and down[1] == target.weight_shape[1], name
        assert target.kind in ("linear", "conv")
    text = [n for n in groups if sd15_names.get(n).is_text]
    assert len(text) == 72


def test_sdxl_ldm_names_and_two_text_encoders():
    with torch.device("meta"):
        model = StableDiffusionModel(family=TINY_SDXL)
    names = NameMap(model=model)
    q = names.get("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q")
    assert q.component == "unet" and q.path == "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert names.get("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q") == q
    assert names.get("lora_te1_text_model_encoder_layers_0_self_attn_q_proj").component == "clip_l"
    assert names.get("lora_te2_text_model_encoder_layers_0_mlp_fc1").component == "clip_g"
    assert names.get("text_encoder_2.text_model.encoder.layers.0.mlp.fc1").component == "clip_g"
    assert names.get("lora_te_text_model_encoder_layers_0_mlp_fc1") is None


def test_peft_and_attention_processor_spellings_are_normalised(sd15_names):
    base = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert split_key(base + ".to_q.lora_A.weight") == (base + ".to_q", "lora_down.weight")
    assert split_key(base + ".processor.to_out_lora.up.weight") == (base + ".to_out.0",
                                                                     "lora_up.weight")
    assert split_key("down_blocks.0.attentions.0.proj_in.lora.down.weight") == (
        "unet.down_blocks.0.attentions.0.proj_in", "lora_down.weight")
    assert sd15_names.get(base + ".to_out.0").path == (
        "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0")
    te = "text_encoder.text_model.encoder.layers.3.self_attn.k_proj"
    grouped = group_tensors({te + ".lora_B.weight": torch.zeros(1),
                             "bundle_emb.x.string_to_param.*": torch.zeros(1),
                             "weird": torch.zeros(1)})
    assert set(grouped.groups[te]) == {"lora_up.weight"}
    assert "x" in grouped.bundled_embeddings and grouped.unknown_keys == ["weird"]
    assert sd15_names.get(te).component == "clip_l"
