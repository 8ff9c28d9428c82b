"""LoRA on Flux.1 and SD3.5 transformers: Easel's merged copies against diffusers' PEFT layers.

A tiny Flux [dev] `FlowModel` (tests/flow_tiny.py: 2 double + 2 single blocks, hidden 64)
and tiny SD3.5 Large / Medium MMDiTs (tests/mmdit_configs.py) get random weights; their
diffusers twins are loaded with the same weights through diffusers' own single-file
converters (tests/helpers/flow_lora.py). A rank-4 LoRA on every Linear of the diffusers
twin, in PEFT's spelling (`transformer.<diffusers path>.lora_A/lora_B.weight`, optionally
AI-toolkit's `.alpha`, or PEFT DoRA's `lora_magnitude_vector`), is loaded by diffusers
(`FluxPipeline.lora_state_dict` + `load_lora_into_transformer`, `load_lora_adapter`:
forward-time PEFT layers) and by Easel (`activate_loras`: q/k/v and proj_mlp LoRAs land
on the rows of the fused `qkv` / `linear1`, the final adaLN's halves swapped).
The same LoRA written the kohya way (`lora_unet_<BFL path>`, one LoRA per fused linear:
the parts' downs stacked, their ups block-diagonal, alpha scaled with the rank) gives
the same merged weights, and diffusers' kohya reader agrees on the output. Text
encoders: kohya `lora_te1_` (CLIP-L) and PEFT `text_encoder_2.` (Flux's T5) through
`activate_networks`, T5 against peft's `inject_adapter_in_model`.

Tolerances: outputs within 1e-5 x std (Flux) / max (SD3, T5) of the oracle's output, as
the models' own parity tests (float32 rounding); merged weights of the two spellings
within 1e-6 absolute. Multiplier 0 is bit-identical to no LoRA.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from modules.conditioning.flow_conditioner import FlowConditioner
from modules.conditioning.t5_tokenizer import load_t5_tokenizer
from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.flow_model import FlowModel
from modules.models.hashes import HashCache
from modules.models.patcher import ModelPatcher
from modules.networks.activate import NetworkRegistry, activate_networks
from modules.networks.lora import name_map
from modules.networks.names import NameMap
from modules.nn.lowbit import LowBitLinear, to_low_bit
from tests.flow_tiny import TINY_FLUX_DEV, TINY_SD35
from tests.helpers.flow_lora import (
    ALPHA,
    RANK,
    assert_close,
    diffusers_flux_velocity,
    easel,
    flow_model,
    flux_inputs,
    flux_twin,
    kohya_from_peft,
    peft_lora,
    tiny_flux,
    with_diffusers_lora,
)
from tests.helpers.lora_files import kohya_lora
from tests.mmdit_configs import TINY_MMDITS, random_mmdit, sd3_diffusers_config


@pytest.fixture(scope="module")
def flux():
    """The tiny Flux [dev] `FlowModel` and its transformer's weights in diffusers' layout."""
    return tiny_flux()


@pytest.mark.parametrize("alpha", [None, ALPHA], ids=["peft", "ai_toolkit_alpha"])
@torch.no_grad()
def test_flux_peft_lora_matches_diffusers(flux, tmp_path, alpha) -> None:
    model, state = flux
    ours = model.unet
    twin = flux_twin(state)
    save_file(peft_lora(twin, seed=1, alpha=alpha), str(tmp_path / "peft.safetensors"))
    activation, warnings = easel(model, tmp_path, "<lora:peft:0.7>")
    assert not warnings, warnings
    inputs = flux_inputs(ours.config)
    plain = ours(**inputs)
    patched = activation.patcher.unet()(**inputs)
    expected = diffusers_flux_velocity(with_diffusers_lora(twin, tmp_path / "peft.safetensors",
                                                           0.7), inputs)
    assert (patched - plain).abs().max() > 1e-2  # the LoRA does something
    assert_close(patched, expected, expected.std().item())
    # Every module of ours that diffusers' q/k/v/proj_mlp parts cover was patched.
    merged = activation.patcher.merged()
    assert not merged.skipped
    assert {f"{p}.weight" for p in ("double_blocks.0.img_attn.qkv", "single_blocks.1.linear1",
                                    "final_layer.adaLN_modulation.1")} <= set(merged.params["unet"])


@torch.no_grad()
def test_flux_kohya_lora_gives_the_peft_weights(flux, tmp_path) -> None:
    model, state = flux
    ours = model.unet
    twin = flux_twin(state)
    peft = peft_lora(twin, seed=2, alpha=ALPHA)
    save_file(peft, str(tmp_path / "peft.safetensors"))
    save_file(kohya_from_peft(peft, ALPHA), str(tmp_path / "kohya.safetensors"))
    from_peft, warnings = easel(model, tmp_path, "<lora:peft:0.8>")
    from_kohya, more = easel(model, tmp_path, "<lora:kohya:0.8>")
    # Half each: row parts and whole fused layers summed on the same layers.
    halves, others = easel(model, tmp_path, "<lora:peft:0.4> <lora:kohya:0.4>")
    assert not warnings + more + others, warnings + more + others
    peft_params = from_peft.patcher.merged().params["unet"]
    for other in (from_kohya, halves):
        params = other.patcher.merged().params["unet"]
        assert set(peft_params) == set(params)
        for name, tensor in peft_params.items():
            torch.testing.assert_close(params[name], tensor, rtol=0, atol=1e-6, msg=name)
    # diffusers' own kohya reader agrees on the output of the blocks' layers. (0.42.1's
    # reader splits `linear1` at the full-size widths, 3 x 3072 + 12288 rows, and names
    # the top-level layers without `transformer.`, so they never load: both left out.)
    kohya = {k: v for k, v in kohya_from_peft(peft, ALPHA).items()
             if k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))
             and "_linear1." not in k}
    save_file(kohya, str(tmp_path / "nolinear1.safetensors"))
    from_file, warnings = easel(model, tmp_path, "<lora:nolinear1:0.8>")
    assert not warnings, warnings
    inputs = flux_inputs(ours.config)
    expected = diffusers_flux_velocity(
        with_diffusers_lora(twin, tmp_path / "nolinear1.safetensors", 0.8), inputs)
    assert_close(from_file.patcher.unet()(**inputs), expected, expected.std().item())


@torch.no_grad()
def test_flux_peft_dora_matches_diffusers(flux, tmp_path) -> None:
    """PEFT DoRA (`lora_magnitude_vector` per output row) on q/k/v parts: each part is
    renormalised over its own rows of the fused weight, as diffusers' separate linears.
    Multiplier 1: at other strengths A1111 blends W and the DoRA result, PEFT does not."""
    model, state = flux
    twin = flux_twin(state)
    lora = peft_lora(twin, seed=8, alpha=None)
    weights, generator = twin.state_dict(), torch.Generator().manual_seed(3)
    for key in [k for k in lora if k.endswith(".lora_A.weight")]:
        module = key.removesuffix(".lora_A.weight")
        weight = weights[module.removeprefix("transformer.") + ".weight"]
        noise = torch.randn(weight.shape[0], generator=generator)
        lora[f"{module}.lora_magnitude_vector"] = weight.norm(dim=1) * (1 + 0.1 * noise)
    save_file(lora, str(tmp_path / "dora.safetensors"))
    activation, warnings = easel(model, tmp_path, "<lora:dora:1>")
    assert not warnings, warnings
    inputs = flux_inputs(model.unet.config)
    expected = diffusers_flux_velocity(with_diffusers_lora(twin, tmp_path / "dora.safetensors",
                                                           1.0), inputs)
    assert_close(activation.patcher.unet()(**inputs), expected, expected.std().item())


@torch.no_grad()
def test_lora_on_float8_flux_equals_lora_on_its_rounded_weights(flux, tmp_path) -> None:
    """A float8 (e4m3fn) transformer: the LoRA merges into the dequantized weights; the
    result equals the same LoRA on a dense model holding those rounded weights."""
    model, state = flux
    save_file(peft_lora(flux_twin(state), seed=9, alpha=ALPHA),
              str(tmp_path / "style.safetensors"))
    low = to_low_bit(copy.deepcopy(model.unet), "float8_e4m3fn", compute_dtype=torch.float32)
    dense = copy.deepcopy(model.unet)
    dense.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    outputs = []
    for network in (low, dense):
        activation, warnings = easel(flow_model(TINY_FLUX_DEV, network), tmp_path,
                                     "<lora:style:0.9>")
        assert not warnings, warnings
        outputs.append(activation.patcher.unet()(**flux_inputs(network.config)))
    assert isinstance(low.double_blocks[0].img_attn.qkv, LowBitLinear)
    assert (outputs[0] - low(**flux_inputs(low.config))).abs().max() > 1e-2
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)


def sd3_pair(config):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    network = random_mmdit(config, seed=6)
    state = {f"model.diffusion_model.{k}": v.clone() for k, v in network.state_dict().items()}
    twin = SD3Transformer2DModel(**sd3_diffusers_config(config)).eval()
    twin.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(state), strict=True)
    model = flow_model(replace(TINY_SD35, diffusion=config), network)
    return model, twin.requires_grad_(False)


@pytest.mark.parametrize("name", ["sd35_large", "sd35_medium"])
@torch.no_grad()
def test_sd35_peft_lora_matches_diffusers(tmp_path, name) -> None:
    config = TINY_MMDITS[name]
    model, twin = sd3_pair(config)
    ours = model.unet
    lora = peft_lora(twin, seed=3, alpha=None)
    save_file(lora, str(tmp_path / "sd3.safetensors"))
    activation, warnings = easel(model, tmp_path, "<lora:sd3:0.6>")
    assert not warnings, warnings
    assert not activation.patcher.merged().skipped
    twin.load_lora_adapter(str(tmp_path / "sd3.safetensors"), prefix="transformer",
                           adapter_name="x")
    twin.set_adapters(["x"], weights=[0.6])
    generator = torch.Generator().manual_seed(8)
    inputs = dict(x=torch.randn(2, 16, 8, 6, generator=generator),
                  timesteps=torch.tensor([999.0, 250.5]),
                  context=torch.randn(2, 7, config.context_in_channels, generator=generator),
                  y=torch.randn(2, config.adm_in_channels, generator=generator))
    expected = twin(hidden_states=inputs["x"], encoder_hidden_states=inputs["context"],
                    pooled_projections=inputs["y"], timestep=inputs["timesteps"],
                    return_dict=False)[0]
    patched = activation.patcher.unet()(**inputs)
    assert (patched - ours(**inputs)).abs().max() > 1e-2
    assert_close(patched, expected, expected.abs().max().item())


@torch.no_grad()
def test_unknown_keys_are_named_in_warnings(flux, tmp_path) -> None:
    model, state = flux
    ours = model.unet
    lora = peft_lora(flux_twin(state), seed=4, alpha=None)
    lora["transformer.no_such_block.0.to_q.lora_A.weight"] = torch.zeros(RANK, 8)
    lora["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] = torch.zeros(RANK, 8)
    lora["stray_tensor"] = torch.zeros(1)
    lora["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"] = torch.zeros(5, RANK)
    save_file(lora, str(tmp_path / "mixed.safetensors"))
    sd1 = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}
    save_file(sd1, str(tmp_path / "sd1.safetensors"))
    activation, warnings = easel(model, tmp_path, "<lora:mixed:1> <lora:sd1:1> <lora:gone:1>")
    text = "\n".join(warnings)
    assert "2 of" in text and "transformer.no_such_block.0.to_q" in text
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in text
    assert "1 keys not understood, e.g. stray_tensor" in text
    assert "LoRA 'sd1' (sd1.safetensors): none of its 1 modules match" in text
    assert "LoRA 'gone' not found" in text
    assert "transformer.transformer_blocks.0.attn.to_q:" in text  # wrong shape: skipped
    assert [name for name, _ in activation.hashes] == ["mixed"]
    inputs = flux_inputs(ours.config)
    assert torch.isfinite(activation.patcher.unet()(**inputs)).all()


@torch.no_grad()
def test_multiplier_zero_is_bit_identical(flux, tmp_path) -> None:
    model, state = flux
    ours = model.unet
    save_file(peft_lora(flux_twin(state), seed=5, alpha=ALPHA),
              str(tmp_path / "zero.safetensors"))
    activation, warnings = easel(model, tmp_path, "<lora:zero:0>")
    assert not warnings
    params = activation.patcher.merged().params["unet"]
    assert params, "the patches were merged"
    base = ours.state_dict()
    assert all(torch.equal(tensor, base[name]) for name, tensor in params.items())
    inputs = flux_inputs(ours.config)
    assert torch.equal(activation.patcher.unet()(**inputs), ours(**inputs))


def flux_loaded(model: FlowModel) -> SimpleNamespace:
    """What `activate_networks` reads of a `LoadedModel`, as `flow_manager.load_flow` builds it."""
    patcher = ModelPatcher(model=model)
    conditioner = FlowConditioner(
        encoders=[patcher.text_encoder(spec.name) for spec in model.family.text_encoders],
        tokenizer=ClipTokenizer(), family=model.family, t5_tokenizer=load_t5_tokenizer())
    return SimpleNamespace(patcher=patcher, model=model, family=model.family,
                           conditioner=conditioner)


@torch.no_grad()
def test_activate_networks_patches_transformer_clip_and_t5(flux, tmp_path) -> None:
    """The job entry point on a Flux `FlowModel`: one file with the transformer (PEFT),
    CLIP-L (kohya `lora_te1_`) and T5 (PEFT `text_encoder_2.`, Flux's second encoder)
    gives a patched transformer, a `FlowConditioner` over patched encoders whose T5
    equals PEFT's (`inject_adapter_in_model` on a copy), and `Lora hashes`."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    model, state = flux
    ours, t5 = model.unet, model.text_encoders["t5xxl"]
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    loaded = flux_loaded(model)
    tensors = peft_lora(flux_twin(state), seed=6, alpha=None)
    tensors |= kohya_lora(name_map(loaded.patcher), ("lora_te1_",), rank=RANK)
    t5_lora = peft_lora(t5.transformer, seed=7, alpha=None, prefix="text_encoder_2.", scale=0.2)
    tensors |= t5_lora
    save_file(tensors, str(lora_dir / "style.safetensors"))
    registry = NetworkRegistry(lora_dir=lora_dir, embeddings_dir=tmp_path / "embeddings",
                               hypernetwork_dir=tmp_path / "hypernetworks",
                               hash_cache=HashCache(path=None))
    active = activate_networks(registry, loaded, ["a cat <lora:style:1:0.5>"], [""])
    assert not active.warnings, active.warnings
    short = registry.loras.shorthash(registry.loras.find("style"))
    assert active.extra_params == {"Lora hashes": f"style: {short}"}
    assert active.cache_token  # the conditioning cache tells patched encoders apart
    inputs = flux_inputs(ours.config)
    assert (active.unet(**inputs) - ours(**inputs)).abs().max() > 1e-2
    conditioner = active.conditioner
    assert isinstance(conditioner, FlowConditioner) and conditioner is not loaded.conditioner
    assert conditioner.t5_tokenizer is loaded.conditioner.t5_tokenizer
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    clip = conditioner.encoder_named("clip_l")(ids).hidden
    assert (clip - model.text_encoders["clip_l"](ids).hidden).abs().max() > 1e-3
    peft_state = {k.removeprefix("text_encoder_2."): v for k, v in t5_lora.items()}
    targets = sorted({k.removesuffix(".lora_A.weight") for k in peft_state if "lora_A" in k})
    reference = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK,
                                                   target_modules=targets),
                                        copy.deepcopy(t5.transformer))
    assert not set_peft_model_state_dict(reference, peft_state).unexpected_keys
    expected = reference(input_ids=ids).last_hidden_state
    patched = conditioner.t5_encoder(ids)
    assert (patched - t5(ids)).abs().max() > 1e-3
    assert_close(patched, expected, expected.abs().max().item())


def test_sd3_text_encoder_names() -> None:
    """SD3.x: kohya numbers CLIP-L, CLIP-G and T5 te1-te3; diffusers text_encoder(_2, _3)."""
    names = NameMap(model=FlowModel(family=TINY_SD35))
    expected = {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": "clip_l",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": "clip_l",
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": "clip_g",
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": "clip_g",
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q": "t5xxl",
        "text_encoder_3.encoder.block.0.layer.0.SelfAttention.q": "t5xxl",
        "lora_unet_joint_blocks_0_x_block_attn_qkv": "unet",
        "transformer.transformer_blocks.2.norm1_context.linear": "unet",
    }
    assert {name: names.get(name).component for name in expected} == expected
    last = names.get("transformer.transformer_blocks.2.norm1_context.linear")
    assert last.path == "joint_blocks.2.context_block.adaLN_modulation.1" and last.swap_halves
    k = names.get("transformer.transformer_blocks.0.attn.to_k")
    hidden = TINY_SD35.diffusion.hidden_size
    assert k.path == "joint_blocks.0.x_block.attn.qkv" and k.rows == (hidden, 2 * hidden)
