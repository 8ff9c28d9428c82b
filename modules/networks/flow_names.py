"""LoRA names of the diffusion transformers of Flux.1 (`FluxTransformer`) and SD3/SD3.5 (`MMDiT`).

Our transformers carry the reference names (Black Forest Labs', Stability AI's), so the
files people download name a layer in one of these spellings (docs/model-formats.md,
"LoRA files"):

* kohya (sd-scripts): `lora_unet_` + our path with `.` -> `_`
  (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_joint_blocks_0_x_block_attn_qkv`);
* ComfyUI-style: `diffusion_model.` + our path, dots kept;
* diffusers / PEFT / AI-toolkit: `transformer.` + the diffusers path
  (`transformer.single_transformer_blocks.0.attn.to_q`); some trainers write it the
  kohya way, `lora_transformer_` + the diffusers path with `.` -> `_`, and LyCORIS
  (SimpleTuner's LoKr / LoHa) as `lycoris_` + that underscored path.

A diffusers name may be one *part* of a fused linear of ours: diffusers keeps q, k and v
(and a Flux single block's MLP input) as separate linears where the reference fuses
them into `qkv` / `linear1`. Such a LoRA updates only its part's output rows; the
rows come from `flux_keys.part_rows` / the equal thirds of an MMDiT `qkv`. diffusers'
final adaLN (and SD3's last `norm1_context`) stores (scale, shift) where we store
(shift, scale): a LoRA trained there has its two halves of rows swapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from torch import nn

from modules.models import flux_keys
from modules.models.sd3_keys import BLOCK_TARGETS, TOP_TARGETS, sai_target
from modules.nn.flux import FluxTransformer
from modules.nn.mmdit import MMDiT

# Prefixes of the spellings that name our own paths.
KOHYA_PREFIX = "lora_unet_"
COMFY_PREFIX = "diffusion_model."
# Prefixes of the spellings that name diffusers paths.
DIFFUSERS_PREFIX = "transformer."
KOHYA_DIFFUSERS_PREFIX = "lora_transformer_"
LYCORIS_PREFIX = "lycoris_"


@dataclass(frozen=True)
class Placement:
    """Where a diffusers linear's LoRA lands in our transformer.

    path: our module; rows: its output rows, (start, stop) with stop None for "to the
    end" (None: all of them); swap_halves: the two halves of those rows are in the
    other order in diffusers' layout.
    """

    path: str
    rows: tuple[int, int | None] | None = None
    swap_halves: bool = False


def is_transformer(network: nn.Module) -> bool:
    """Whether `network` is one of the flow transformers this module names."""
    return isinstance(network, (FluxTransformer, MMDiT))


def own_names(path: str) -> tuple[str, ...]:
    """The spellings of one of our module paths: kohya's and ComfyUI's."""
    return KOHYA_PREFIX + path.replace(".", "_"), COMFY_PREFIX + path


def diffusers_spellings(module: str) -> tuple[str, ...]:
    """The spellings of one diffusers module path: PEFT's, the kohya-style and LyCORIS'."""
    underscored = module.replace(".", "_")
    return (DIFFUSERS_PREFIX + module, KOHYA_DIFFUSERS_PREFIX + underscored,
            LYCORIS_PREFIX + underscored)


def _flux_modules(network: FluxTransformer) -> Iterator[str]:
    """Every diffusers module name a Flux transformer of this shape has (or might have)."""
    config = network.config
    yield from flux_keys.TOP_LEVEL
    double = list(chain(flux_keys.DOUBLE_BLOCK, *flux_keys.DOUBLE_FUSED.values()))
    single = list(chain(flux_keys.SINGLE_BLOCK, *flux_keys.SINGLE_FUSED.values()))
    for index in range(config.depth):
        yield from (f"transformer_blocks.{index}.{inner}" for inner in double)
    for index in range(config.depth_single_blocks):
        yield from (f"single_transformer_blocks.{index}.{inner}" for inner in single)


def _flux_placements(network: FluxTransformer) -> Iterator[tuple[str, Placement]]:
    hidden = network.config.hidden_size
    for module in _flux_modules(network):
        target = flux_keys.bfl_target(module)
        if target is None:
            continue
        rows = None
        if target.parts > 1:
            part = flux_keys.part_rows(target, hidden)
            rows = (part.start, part.stop)
        yield module, Placement(target.module, rows, target.module == flux_keys.SWAPPED_HALVES)


def _mmdit_placements(network: MMDiT) -> Iterator[tuple[str, Placement]]:
    depth = network.config.depth
    hidden = network.config.hidden_size
    blocks = (f"transformer_blocks.{i}.{inner}" for i in range(depth) for inner in BLOCK_TARGETS)
    for module in chain(TOP_TARGETS, blocks):
        target = sai_target(module, last_block=depth - 1)
        if target is None:
            continue
        rows = None
        if target.parts > 1:  # q, k, v: equal blocks of `hidden` rows
            rows = (target.part * hidden, (target.part + 1) * hidden)
        yield module, Placement(target.module, rows, target.swap_halves)


def diffusers_placements(network: nn.Module) -> Iterator[tuple[str, Placement]]:
    """(diffusers module path, placement) for each linear diffusers' twin would have.

    Names whose module this network lacks (MMDiT-X `attn2` outside its blocks, the
    last block's missing text MLP, norms) are yielded too; the caller keeps those
    whose path is a patchable layer of ours.
    """
    if isinstance(network, FluxTransformer):
        return _flux_placements(network)
    if isinstance(network, MMDiT):
        return _mmdit_placements(network)
    raise TypeError(f"{type(network).__name__} is not a Flux or MMDiT transformer")
