"""Tiny Flux / SD3 models with random LoRAs in PEFT and kohya spellings, and diffusers as oracle.

Used by tests/test_networks_flux_sd3.py: `tiny_flux` builds the tiny Flux [dev] `FlowModel`
(tests/flow_tiny.py) with a randomised transformer and its weights in diffusers' layout;
`peft_lora` writes a rank-4 LoRA on every Linear of a diffusers / transformers model;
`kohya_from_peft` writes the same LoRA under BFL names (one LoRA per fused linear);
`easel` applies a tag through `activate_loras`; `with_diffusers_lora` loads a file into
diffusers' twin (forward-time PEFT layers).
"""

from __future__ import annotations

import torch
from torch import nn

from modules.conditioning.prompt_parser import extract_extra_networks
from modules.models import flux_keys
from modules.models.flow_model import FlowModel
from modules.models.hashes import HashCache
from modules.models.patcher import ModelPatcher
from modules.networks.library import LoraLibrary
from modules.networks.lora import activate_loras, merge_warnings
from modules.nn.flux import FluxTransformer
from tests.flow_tiny import TINY_FLUX_DEV, randomise
from tests.flux_oracle import bfl_to_diffusers, diffusers_flux

RANK, ALPHA = 4, 2.0
RELATIVE_TOLERANCE = 1e-5


def randomise_flux(model: nn.Module, seed: int) -> None:
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


def tiny_flux(seed: int = 4) -> tuple[FlowModel, dict[str, torch.Tensor]]:
    """The tiny Flux [dev] `FlowModel` and its transformer's weights in diffusers' layout."""
    config = TINY_FLUX_DEV.diffusion
    network = FluxTransformer(config=config)
    randomise_flux(network, seed=seed)
    return flow_model(TINY_FLUX_DEV, network), bfl_to_diffusers(network.state_dict(), config)
