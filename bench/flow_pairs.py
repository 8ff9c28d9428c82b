"""SD3.5 / Flux.1 / T5-XXL model pairs for the flow benchmarks: Easel's and diffusers'
(or plain transformers') networks holding the same random weights.

Every model is built on the meta device and filled by assignment, so a full-size pair
costs one set of weights where the two can share tensors (the SD3 converter's outputs are
views of its inputs) and no time in random initialisation of a float32 copy. The weights
are random (std 0.02; norm gains 1 + 0.02·noise): timing does not depend on their values,
and `relative_difference` still shows the two engines compute the same function.
Used by bench/bench_flow.py (CPU) and bench/gpu_flow.py (CUDA rows of bench_gpu.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from modules.nn.flux import FLUX_SCHNELL, FluxConfig, FluxTransformer, tiny_flux_config
from modules.nn.mmdit import SD35_MEDIUM, MMDiT, MMDiTConfig
from modules.nn.t5_encoder import T5_XXL, T5Config, T5TextEncoder

TINY_T5 = T5Config(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
                   intermediate_size=64)
# Flux.1 at full width (hidden 3072, 24 heads, T5 / CLIP widths as released) with 2 double
# and 4 single blocks instead of 19 + 38: the per-block work of the full model, 1.3 B
# weights (2.6 GB in bf16) so that two engines' copies fit in a 24 GB machine.
FLUX_REDUCED = dataclasses.replace(FLUX_SCHNELL, depth=2, depth_single_blocks=4)


def sd35_config(size: str) -> MMDiTConfig:
    if size == "tiny":
        from tests.mmdit_configs import TINY_SD35_MEDIUM

        return TINY_SD35_MEDIUM
    return SD35_MEDIUM


def flux_config(size: str) -> FluxConfig:
    if size == "tiny":
        return tiny_flux_config(guidance_embed=False)
    return FLUX_SCHNELL if size == "full" else FLUX_REDUCED


def t5_config(size: str) -> T5Config:
    return TINY_T5 if size == "tiny" else T5_XXL


def is_gain(key: str, shape: torch.Size) -> bool:
    """A norm's per-channel gain (set near 1 rather than near 0)."""
    return len(shape) == 1 and any(part in key for part in ("norm", "scale", "ln_"))


def random_state(shapes: Mapping[str, torch.Size], dtype: torch.dtype, *, seed: int = 0,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Random tensors of `shapes` in `dtype` (see the module docstring)."""
    generator = torch.Generator(device).manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator, dtype=dtype, device=device) * 0.02
        state[key] = value + 1 if is_gain(key, shape) else value
    return state


def shapes_of(model: nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in model.state_dict().items()}


def assert_materialised(model: nn.Module) -> nn.Module:
    """Every parameter and buffer got a real tensor (none left on the meta device)."""
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__}: tensors left on meta: {left[:5]}")
    return model.eval()


def sd35_pair(config: MMDiTConfig, dtype: torch.dtype, device: str = "cpu"):
    """Our MMDiT and diffusers' SD3Transformer2DModel on one set of random weights."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    from tests.mmdit_configs import sd3_diffusers_config

    with torch.device("meta"):
        ours = MMDiT(config=config)
        theirs = SD3Transformer2DModel(**sd3_diffusers_config(config))
    state = random_state(shapes_of(ours), dtype, device=device)
    ours.load_state_dict(state, assign=True)
    prefixed = {f"model.diffusion_model.{k}": v for k, v in state.items()}
    theirs.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(prefixed),
                           strict=True, assign=True)
    return assert_materialised(ours), assert_materialised(theirs)


def placed(inputs: dict[str, torch.Tensor], dtype: torch.dtype,
           device: str) -> dict[str, torch.Tensor]:
    """The inputs on `device`, in `dtype` but for the timesteps (kept float32)."""
    return {k: v.to(device, dtype if k != "timesteps" else torch.float32)
            for k, v in inputs.items()}


def sd35_inputs(config: MMDiTConfig, side: int, tokens: int, dtype: torch.dtype,
                device: str = "cpu", batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = dict(
        x=torch.randn(batch, config.in_channels, side, side, generator=generator),
        timesteps=torch.full((batch,), 500.0),
        context=torch.randn(batch, tokens, config.context_in_channels, generator=generator),
        y=torch.randn(batch, config.adm_in_channels, generator=generator))
    return placed(inputs, dtype, device)


def sd35_diffusers_call(model: nn.Module, inputs: dict):
    """diffusers' call on our inputs (the same σ·1000 timesteps)."""
    def call() -> torch.Tensor:
        return model(hidden_states=inputs["x"], encoder_hidden_states=inputs["context"],
                     pooled_projections=inputs["y"], timestep=inputs["timesteps"],
                     return_dict=False)[0]
    return call


def flux_ours(config: FluxConfig, state: Mapping[str, torch.Tensor]) -> FluxTransformer:
    with torch.device("meta"):
        model = FluxTransformer(config=config)
    model.load_state_dict(state, assign=True)
    return assert_materialised(model)


def flux_pair(config: FluxConfig, dtype: torch.dtype, device: str = "cpu"):
    """Our FluxTransformer, diffusers' FluxTransformer2DModel (same weights) and the state."""
    from tests.flux_oracle import bfl_to_diffusers, diffusers_flux

    with torch.device("meta"):
        ours = FluxTransformer(config=config)
        theirs = diffusers_flux(config)
    state = random_state(shapes_of(ours), dtype, device=device)
    ours.load_state_dict(state, assign=True)
    theirs.load_state_dict(bfl_to_diffusers(state, config), strict=True, assign=True)
    return assert_materialised(ours), assert_materialised(theirs), state


def flux_inputs(config: FluxConfig, side: int, tokens: int, dtype: torch.dtype,
                device: str = "cpu", batch: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    inputs = dict(
        x=torch.randn(batch, config.latent_channels, side, side, generator=generator),
        timesteps=torch.full((batch,), 0.75),
        context=torch.randn(batch, tokens, config.context_in_dim, generator=generator),
        y=torch.randn(batch, config.vec_in_dim, generator=generator))
    return placed(inputs, dtype, device)


def flux_diffusers_call(model: nn.Module, inputs: dict):
    """diffusers' call; the latents are packed and the ids built once, outside the step
    (as FluxPipeline does per image), so the timed call is the transformer alone."""
    from diffusers import FluxPipeline

    x = inputs["x"]
    batch, channels, height, width = x.shape
    packed = FluxPipeline._pack_latents(x, batch, channels, height, width)
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2,
                                                     x.device, x.dtype)
    txt_ids = torch.zeros(inputs["context"].shape[1], 3, device=x.device, dtype=x.dtype)

    def call() -> torch.Tensor:
        out = model(hidden_states=packed, encoder_hidden_states=inputs["context"],
                    pooled_projections=inputs["y"], timestep=inputs["timesteps"],
                    img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, height * 8, width * 8, 8)
    return call


def t5_encoder(config: T5Config, dtype: torch.dtype, device: str = "cpu") -> T5TextEncoder:
    """Our T5 wrapper on random weights; `.transformer` is the plain transformers model."""
    with torch.device("meta"):
        encoder = T5TextEncoder(config=config)
    shapes = shapes_of(encoder.transformer)
    shapes.pop("encoder.embed_tokens.weight", None)
    missing = encoder.load_weights(random_state(shapes, dtype, device=device), assign=True)
    assert not missing, missing
    return assert_materialised(encoder)


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    scale = reference.float().abs().max().clamp_min(1e-12)
    return float(f"{float((ours.float() - reference.float()).abs().max() / scale):.3g}")
