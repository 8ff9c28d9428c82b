"""Rename diffusers `FluxTransformer2DModel` weights to Black Forest Labs' Flux.1 names.

Our `modules.nn.flux.FluxTransformer` uses BFL's names (those of `flux1-dev.safetensors`),
so a diffusers folder (`transformer/diffusion_pytorch_model*.safetensors`) is the one
source that needs a mapping. It is the inverse of what diffusers' single-file converter
does, with three things beyond renaming:

* q, k, v are separate linears in diffusers (`attn.to_q`, `to_k`, `to_v`; the text
  stream's `attn.add_q_proj`, ...) and one fused `qkv` in BFL: concatenated on the
  output axis in the order q, k, v.
* a single-stream block's `linear1` is q, k, v and the MLP's input layer
  (`proj_mlp`) fused, in that order.
* the final adaLN (`norm_out.linear`) gives (scale, shift) in diffusers and
  (shift, scale) in BFL (`final_layer.adaLN_modulation.1`): the two halves of its
  output rows are swapped.

Keys may carry diffusers' `transformer.` prefix (a whole-pipeline state dict). Every key
either maps or is reported: unknown keys and incomplete q/k/v groups raise
`UnmappedKeysError`; nothing is dropped silently.

`flux_config_from_shapes` reads the architecture off BFL-named tensor shapes (a file's
header), so dev, schnell and derivatives with other block counts build the right model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

from modules.models.diffusers_keys import UnmappedKeysError
from modules.nn.flux import FluxConfig

# Top-level diffusers module -> BFL module.
TOP_LEVEL = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "proj_out": "final_layer.linear",
}
# Inside `transformer_blocks.N` -> inside `double_blocks.N`.
DOUBLE_BLOCK = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
# Inside `single_transformer_blocks.N` -> inside `single_blocks.N`.
SINGLE_BLOCK = {
    "norm.linear": "modulation.lin",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
    "proj_out": "linear2",
}
# Fused BFL linears and their diffusers parts, in concatenation order.
DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
# The one linear whose output halves are in the other order.
SWAPPED_HALVES = "final_layer.adaLN_modulation.1"

BLOCK_PATTERN = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")
BLOCKS = {
    "transformer_blocks": ("double_blocks", DOUBLE_BLOCK, DOUBLE_FUSED),
    "single_transformer_blocks": ("single_blocks", SINGLE_BLOCK, SINGLE_FUSED),
}


class BflTarget(NamedTuple):
    """Where a diffusers linear lands: part `part` of `parts` of BFL module `module`.

    A plain rename is part 0 of 1. A fused linear stacks its parts on the output axis:
    parts 0-2 (q, k, v) are `hidden_size` rows each, a single block's part 3 (the MLP
    input) is the rest (`part_rows`). LoRA loading uses this for diffusers/PEFT names.
    """

    module: str
    part: int
    parts: int


def bfl_target(module: str) -> BflTarget | None:
    """The BFL module (and part of it) of a diffusers module name; None if unknown."""
    module = module.removeprefix("transformer.")
    if module in TOP_LEVEL:
        return BflTarget(TOP_LEVEL[module], 0, 1)
    match = BLOCK_PATTERN.fullmatch(module)
    if match is None:
        return None
    kind, index, inner = match.groups()
    bfl_kind, plain, fused = BLOCKS[kind]
    prefix = f"{bfl_kind}.{index}."
    if inner in plain:
        return BflTarget(prefix + plain[inner], 0, 1)
    for target, parts in fused.items():
        if inner in parts:
            return BflTarget(prefix + target, parts.index(inner), len(parts))
    return None


def part_rows(target: BflTarget, hidden_size: int) -> slice:
    """The output rows of the fused BFL linear that `target`'s part occupies."""
    if target.parts == 1:
        return slice(None)
    start = target.part * hidden_size
    # q, k and v are hidden_size wide; the MLP input after them takes the rest.
    return slice(start, start + hidden_size) if target.part < 3 else slice(start, None)


def _bfl_param(module: str, param: str) -> str:
    """BFL's RMS norms call their weight `scale`."""
    return "scale" if module.endswith("_norm") and param == "weight" else param


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (b, a) along the output axis."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_bfl(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `FluxTransformer2DModel` state dict under BFL's names (see module docstring).

    Raises `UnmappedKeysError` naming the keys with no BFL name, and the parts of any
    fused linear that arrived without all its siblings.
    """
    converted: dict[str, torch.Tensor] = {}
    # Fused linears: BFL key -> {part index: tensor}, with the number of parts expected.
    groups: dict[str, dict[int, torch.Tensor]] = {}
    sizes: dict[str, int] = {}
    unknown = []
    for key, tensor in state_dict.items():
        module, _, param = key.removeprefix("transformer.").rpartition(".")
        target = bfl_target(module)
        if target is None:
            unknown.append(key)
            continue
        bfl_key = f"{target.module}.{_bfl_param(target.module, param)}"
        if target.module == SWAPPED_HALVES:
            tensor = _swap_halves(tensor)
        if target.parts == 1:
            converted[bfl_key] = tensor
        else:
            groups.setdefault(bfl_key, {})[target.part] = tensor
            sizes[bfl_key] = target.parts
    for bfl_key, parts in groups.items():
        if len(parts) == sizes[bfl_key]:
            converted[bfl_key] = torch.cat([parts[i] for i in range(len(parts))], dim=0)
        else:
            unknown.append(f"{bfl_key} (only {len(parts)} of its {sizes[bfl_key]} parts)")
    if unknown:
        raise UnmappedKeysError("diffusers Flux", unknown, target="BFL")
    return converted


def _block_count(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    """1 + the highest N of `prefix.N.` keys (0 when there are none)."""
    indices = {int(key.split(".")[1]) for key in shapes if key.startswith(prefix + ".")}
    return max(indices) + 1 if indices else 0


def flux_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], *, axes_dim: tuple[int, ...] | None = None
) -> FluxConfig:
    """The `FluxConfig` of a BFL-named transformer, from its tensors' shapes (no prefix).

    The RoPE axes are not in the shapes: by default Flux.1's (16, 56, 56), which need
    128 channels per head; pass `axes_dim` for other head widths (tiny test models).
    """
    hidden, in_channels = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    axes_dim = axes_dim or FluxConfig().axes_dim
    if head_dim != sum(axes_dim):
        raise ValueError(f"Flux heads of {head_dim} channels do not fit RoPE axes {axes_dim}")
    return FluxConfig(
        in_channels=in_channels,
        vec_in_dim=shapes["vector_in.in_layer.weight"][1],
        context_in_dim=shapes["txt_in.weight"][1],
        hidden_size=hidden,
        mlp_ratio=shapes["double_blocks.0.img_mlp.0.weight"][0] / hidden,
        num_heads=hidden // head_dim,
        depth=_block_count(shapes, "double_blocks"),
        depth_single_blocks=_block_count(shapes, "single_blocks"),
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in shapes,
        axes_dim=axes_dim,
        guidance_embed="guidance_in.in_layer.weight" in shapes,
    )
