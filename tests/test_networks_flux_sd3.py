"""LoRA on Flux.1 and SD3.5 transformers: Easel's merged copies against diffusers' PEFT layers.

A tiny Flux (`tiny_flux_config`, dev style: 2 double + 2 single blocks, hidden 64) and a
tiny SD3.5 MMDiT (tests/mmdit_configs.py) get random weights; their diffusers twins are
loaded with the same weights through diffusers' own single-file converters. A rank-4
LoRA on every Linear of the diffusers twin, in PEFT's spelling
(`transformer.<diffusers path>.lora_A/lora_B.weight`, optionally AI-toolkit's `.alpha`),
is loaded by diffusers (`FluxPipeline.lora_state_dict` + `load_lora_into_transformer`,
forward-time PEFT layers) and by Easel (`activate_loras`: q/k/v and proj_mlp LoRAs land
on the rows of the fused `qkv` / `linear1`, the final adaLN's halves swapped).
The same LoRA written the kohya way (`lora_unet_<BFL path>`, one LoRA per fused linear:
the parts' downs stacked, their ups block-diagonal, alpha scaled with the rank) gives
the same merged weights, and diffusers' kohya reader agrees on the output.

Tolerances: outputs within 1e-5 x std (Flux) / max (SD3) of diffusers' output, as the
models' own parity tests (float32 rounding); merged weights of the two spellings within
1e-6 absolute. Multiplier 0 is bit-identical to no LoRA.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from modules.conditioning.flow_conditioner import FlowConditioner
from modules.conditioning.prompt_parser import extract_extra_networks
from modules.conditioning.t5_tokenizer import load_t5_tokenizer
from modules.conditioning.tokenizer import ClipTokenizer
from modules.models import flux_keys
from modules.models.flow_model import FlowModel
from modules.models.hashes import HashCache
from modules.models.patcher import ModelPatcher
from modules.networks.activate import NetworkRegistry, activate_networks
from modules.networks.library import LoraLibrary
from modules.networks.lora import activate_loras, merge_warnings, name_map
from modules.networks.names import NameMap
from modules.nn.flux import FluxTransformer
from tests.flow_tiny import TINY_FLUX_DEV, TINY_SD35, randomise
from tests.flux_oracle import bfl_to_diffusers, diffusers_flux
from tests.helpers.lora_files import kohya_lora
from tests.mmdit_configs import TINY_MMDITS, random_mmdit, sd3_diffusers_config

pytest.importorskip("diffusers")
pytest.importorskip("peft")

RANK, ALPHA = 4, 2.0
RELATIVE_TOLERANCE = 1e-5


def _randomise(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            param.copy_(noise + 1 if name.endswith(".scale") else noise)


def flow_model(family, network: nn.Module) -> FlowModel:
    """A `FlowModel` of `family` (random text encoders) with `network` as its transformer."""
    model = FlowModel(family=family)
    model.model.diffusion_model = network
    for index, encoder in enumerate(model.text_encoders.values()):
        randomise(encoder, seed=10 + index)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def flux():
    """The tiny Flux [dev] `FlowModel` and its transformer's weights in diffusers' layout."""
    config = TINY_FLUX_DEV.diffusion
    network = FluxTransformer(config=config)
    _randomise(network, seed=4)
    return flow_model(TINY_FLUX_DEV, network), bfl_to_diffusers(network.state_dict(), config)


def flux_twin(state: dict) -> nn.Module:
    twin = diffusers_flux(TINY_FLUX_DEV.diffusion)
    twin.load_state_dict(state, strict=True)
    return twin.eval().requires_grad_(False)


def peft_lora(twin: nn.Module, *, seed: int, alpha: float | None,
              prefix: str = "transformer.", scale: float = 0.1) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every Linear of a diffusers / transformers model, PEFT's spelling."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in sorted(twin.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        key = f"{prefix}{name}"
        tensors[f"{key}.lora_A.weight"] = torch.randn(
            RANK, module.in_features, generator=generator) * scale
        tensors[f"{key}.lora_B.weight"] = torch.randn(
            module.out_features, RANK, generator=generator) * scale
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    return tensors


def kohya_from_peft(peft: dict[str, torch.Tensor], alpha: float | None) -> dict:
    """The same LoRA under BFL names, one (down, up) per fused linear of ours."""
    parts: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for key, down in peft.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            target = flux_keys.bfl_target(module)
            up = peft[key.replace(".lora_A.", ".lora_B.")]
            parts.setdefault(target.module, {})[target.part] = (down, up)
    tensors = {}
    for module, found in parts.items():
        ordered = [found[i] for i in range(len(found))]
        up = torch.block_diag(*(u for _, u in ordered))
        if module == flux_keys.SWAPPED_HALVES:  # diffusers' (scale, shift) -> BFL's order
            up = torch.cat(up.chunk(2, dim=0)[::-1], dim=0)
        name = "lora_unet_" + module.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = torch.cat([d for d, _ in ordered], dim=0)
        tensors[f"{name}.lora_up.weight"] = up
        # Per part, scale alpha / rank; stacked, the rank is len(parts) times larger.
        tensors[f"{name}.alpha"] = torch.tensor((alpha or RANK) * len(ordered))
    return tensors


def easel(model: nn.Module, folder, tag: str):
    patcher = ModelPatcher(model=model)
    library = LoraLibrary(folder=folder, hash_cache=HashCache(path=None))
    activation = activate_loras(patcher, library, extract_extra_networks(tag)[1])
    return activation, activation.warnings + merge_warnings(activation)


def flux_inputs(config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return dict(x=torch.randn(2, 16, 6, 8, generator=generator),
                timesteps=torch.tensor([0.3, 0.9]),
                context=torch.randn(2, 5, config.context_in_dim, generator=generator),
                y=torch.randn(2, config.vec_in_dim, generator=generator),
                guidance=torch.tensor([3.5, 2.0]))


def diffusers_flux_velocity(twin: nn.Module, inputs: dict) -> torch.Tensor:
    from diffusers import FluxPipeline

    x = inputs["x"]
    batch, channels, height, width = x.shape
    out = twin(hidden_states=FluxPipeline._pack_latents(x, batch, channels, height, width),
               encoder_hidden_states=inputs["context"], pooled_projections=inputs["y"],
               timestep=inputs["timesteps"], guidance=inputs["guidance"],
               img_ids=FluxPipeline._prepare_latent_image_ids(
                   batch, height // 2, width // 2, x.device, x.dtype),
               txt_ids=torch.zeros(inputs["context"].shape[1], 3)).sample
    return FluxPipeline._unpack_latents(out, height * 8, width * 8, 8)


def with_diffusers_lora(twin: nn.Module, path, multiplier: float) -> nn.Module:
    from diffusers import FluxPipeline

    state, alphas = FluxPipeline.lora_state_dict(str(path), return_alphas=True)
    FluxPipeline.load_lora_into_transformer(state, alphas, twin, adapter_name="x")
    twin.set_adapters(["x"], weights=[multiplier])
    return twin


def assert_close(ours: torch.Tensor, expected: torch.Tensor, scale: float) -> None:
    assert ours.shape == expected.shape
    error = (ours - expected).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * scale, (error, scale)


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
    assert not warnings + more, warnings + more
    peft_params = from_peft.patcher.merged().params["unet"]
    kohya_params = from_kohya.patcher.merged().params["unet"]
    assert set(peft_params) == set(kohya_params)
    for name, tensor in peft_params.items():
        torch.testing.assert_close(kohya_params[name], tensor, rtol=0, atol=1e-6, msg=name)
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
