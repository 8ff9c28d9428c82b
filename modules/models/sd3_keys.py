"""Rename diffusers' `SD3Transformer2DModel` weights to Stability AI's MMDiT names.

Our MMDiT (`modules/nn/mmdit.py`) uses the names of the SD3 / SD3.5 single files, so a
diffusers folder (`transformer/`) and PEFT LoRAs trained on diffusers' layout are the
sources that need a map. The rules, per module (weights and biases alike):

* `pos_embed.pos_embed` -> `pos_embed`, `pos_embed.proj` -> `x_embedder.proj`;
  `time_text_embed.timestep_embedder.linear_1/2` -> `t_embedder.mlp.0/2`,
  `time_text_embed.text_embedder.linear_1/2` -> `y_embedder.mlp.0/2`; `context_embedder`.
* `transformer_blocks.N` -> `joint_blocks.N`: the image stream's `attn.to_q/to_k/to_v`
  are the three row blocks of `x_block.attn.qkv`, the text stream's
  `attn.add_q_proj/add_k_proj/add_v_proj` those of `context_block.attn.qkv`, MMDiT-X's
  `attn2.to_q/k/v` those of `x_block.attn2.qkv`; `norm_q/norm_k` -> `ln_q/ln_k`
  (`norm_added_*` for the text stream); `to_out.0` / `to_add_out` -> `attn.proj`;
  `norm1(_context).linear` -> `adaLN_modulation.1`; `ff(_context).net.0.proj/net.2` ->
  `mlp.fc1/fc2`.
* `proj_out` -> `final_layer.linear`; `norm_out.linear` -> `final_layer.adaLN_modulation.1`.
  diffusers' `AdaLayerNormContinuous` (`norm_out`, and `norm1_context` of the last,
  pre-only block) stores (scale, shift) where the reference stores (shift, scale): the
  two halves of those rows are swapped.

Every key either maps or is reported (`UnmappedKeysError`); nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from modules.models.diffusers_keys import UnmappedKeysError


@dataclass(frozen=True)
class Target:
    """Where a diffusers module's rows go in the reference layout.

    `module` is the reference module; its weight's rows are split into `parts` equal
    blocks (3 for a fused qkv) of which this module is block `part`. `swap_halves`:
    the (scale, shift) halves become (shift, scale).
    """

    module: str
    part: int = 0
    parts: int = 1
    swap_halves: bool = False


def _qkv(module: str) -> dict[str, Target]:
    return {name: Target(module, index, 3) for index, name in enumerate(("q", "k", "v"))}


_IMAGE, _TEXT = _qkv("x_block.attn.qkv"), _qkv("context_block.attn.qkv")
_IMAGE2 = _qkv("x_block.attn2.qkv")

# diffusers module inside `transformer_blocks.N` -> reference module inside `joint_blocks.N`.
BLOCK_TARGETS: dict[str, Target] = {
    "attn.to_q": _IMAGE["q"], "attn.to_k": _IMAGE["k"], "attn.to_v": _IMAGE["v"],
    "attn.add_q_proj": _TEXT["q"], "attn.add_k_proj": _TEXT["k"], "attn.add_v_proj": _TEXT["v"],
    "attn2.to_q": _IMAGE2["q"], "attn2.to_k": _IMAGE2["k"], "attn2.to_v": _IMAGE2["v"],
    "attn.norm_q": Target("x_block.attn.ln_q"), "attn.norm_k": Target("x_block.attn.ln_k"),
    "attn.norm_added_q": Target("context_block.attn.ln_q"),
    "attn.norm_added_k": Target("context_block.attn.ln_k"),
    "attn2.norm_q": Target("x_block.attn2.ln_q"), "attn2.norm_k": Target("x_block.attn2.ln_k"),
    "attn.to_out.0": Target("x_block.attn.proj"),
    "attn.to_add_out": Target("context_block.attn.proj"),
    "attn2.to_out.0": Target("x_block.attn2.proj"),
    "norm1.linear": Target("x_block.adaLN_modulation.1"),
    "norm1_context.linear": Target("context_block.adaLN_modulation.1"),
    "ff.net.0.proj": Target("x_block.mlp.fc1"), "ff.net.2": Target("x_block.mlp.fc2"),
    "ff_context.net.0.proj": Target("context_block.mlp.fc1"),
    "ff_context.net.2": Target("context_block.mlp.fc2"),
}

# diffusers top-level module -> reference module.
TOP_TARGETS: dict[str, Target] = {
    "pos_embed.proj": Target("x_embedder.proj"),
    "time_text_embed.timestep_embedder.linear_1": Target("t_embedder.mlp.0"),
    "time_text_embed.timestep_embedder.linear_2": Target("t_embedder.mlp.2"),
    "time_text_embed.text_embedder.linear_1": Target("y_embedder.mlp.0"),
    "time_text_embed.text_embedder.linear_2": Target("y_embedder.mlp.2"),
    "context_embedder": Target("context_embedder"),
    "proj_out": Target("final_layer.linear"),
    "norm_out.linear": Target("final_layer.adaLN_modulation.1", swap_halves=True),
}

_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def sai_target(module: str, *, last_block: int) -> Target | None:
    """The reference target of a diffusers module name (no `.weight`), or None if unknown.

    `last_block` is the index of the pre-only block, whose `norm1_context` is swapped.
    """
    if module in TOP_TARGETS:
        return TOP_TARGETS[module]
    match = _BLOCK.fullmatch(module)
    if match is None or match.group(2) not in BLOCK_TARGETS:
        return None
    index, inner = int(match.group(1)), match.group(2)
    target = BLOCK_TARGETS[inner]
    swap = inner == "norm1_context.linear" and index == last_block
    return Target(f"joint_blocks.{index}.{target.module}", target.part, target.parts, swap)


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _last_block(state_dict: Mapping[str, torch.Tensor]) -> int:
    indices = [int(m.group(1)) for m in map(_BLOCK.fullmatch, state_dict) if m is not None]
    return max(indices, default=-1)


def diffusers_to_sai(state_dict: Mapping[str, torch.Tensor], *, depth: int | None = None
                     ) -> dict[str, torch.Tensor]:
    """A diffusers `SD3Transformer2DModel` state dict in Stability AI's MMDiT names.

    :param depth: number of blocks; by default one more than the highest block index
        present (the last block is the pre-only one)
    :raises UnmappedKeysError: keys with no reference name, or fused tensors with parts
        missing (a `to_q` without its `to_k` and `to_v`)
    """
    last_block = depth - 1 if depth is not None else _last_block(state_dict)
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    parts: dict[str, int] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        if key == "pos_embed.pos_embed":
            pieces["pos_embed"], parts["pos_embed"] = {0: tensor}, 1
            continue
        module, _, leaf = key.rpartition(".")
        target = sai_target(module, last_block=last_block)
        if target is None or leaf not in ("weight", "bias"):
            unmapped.append(key)
            continue
        name = f"{target.module}.{leaf}"
        pieces.setdefault(name, {})[target.part] = (
            _swap_halves(tensor) if target.swap_halves else tensor)
        parts[name] = target.parts
    incomplete = [name for name, found in pieces.items() if len(found) != parts[name]]
    if unmapped or incomplete:
        raise UnmappedKeysError("SD3 transformer", unmapped + [f"{n} (parts)" for n in incomplete])
    return {name: torch.cat([found[i] for i in range(parts[name])], dim=0)
            if parts[name] > 1 else found[0] for name, found in pieces.items()}
