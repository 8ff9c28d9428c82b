"""Which module of our model a LoRA key names, built from the model itself.

LoRA files name the layer they change in one of several spellings (docs/model-formats.md,
"LoRA files"):

* kohya, SD1/SD2: `lora_unet_` + the *diffusers* U-Net path with `.` -> `_`
  (`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`);
* kohya, SDXL: `lora_unet_` + the *LDM* path (`lora_unet_input_blocks_4_1_..._to_q`);
* kohya text encoders: `lora_te_` (one encoder) or `lora_te1_` / `lora_te2_` (SDXL) +
  the transformers CLIP path (`text_model_encoder_layers_0_self_attn_q_proj`);
* diffusers / PEFT: `unet.` + diffusers path, `text_encoder.` / `text_encoder_2.` +
  CLIP path, dots kept.
* T5 (SD3.x, Flux.1): kohya `lora_te3_` (sd-scripts numbers it third for both), diffusers
  `text_encoder_3.` (SD3) / `text_encoder_2.` (Flux) + the transformers T5 encoder path
  (`encoder.block.0.layer.0.SelfAttention.q`).

Flux.1 and SD3/SD3.5 transformers (`flow_names.py`) have spellings of their own: kohya's
`lora_unet_` + our (reference) path, and diffusers' `transformer.` + its path, which
may name one part (rows) of a fused linear of ours.

Underscores cannot be parsed back into paths (`transformer_blocks`, `to_q` and
`proj_in` contain some), so the map goes the other way: every Linear, Conv2d and norm
of the model is enumerated, and each gets all its names - from its LDM path and from
its diffusers path (through `modules.models.diffusers_keys`). A key is then a plain
dictionary lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torch import nn

from modules.models.diffusers_keys import map_unet_keys_to_diffusers
from modules.networks import flow_names
from modules.nn.t5_encoder import T5TextEncoder
from modules.nn.text_encoders import TextEncoder

ModuleKind = Literal["linear", "conv", "norm"]
UNET = "unet"
T5_KOHYA_PREFIX = "lora_te3_"


@dataclass(frozen=True)
class Target:
    """One patchable layer: which component holds it, its path there, its weight shape.

    component: "unet" or a text encoder name ("clip_l", "clip_h", "clip_g").
    path: the module path inside that component (`model.unet` or the `TextEncoder`),
    so the patched parameters are `path + ".weight"` / `path + ".bias"`.
    rows / swap_halves: the (start, stop) output rows of a fused layer a name covers
    (stop None: to the end), and whether its two halves of rows are in the other order
    (diffusers names of Flux / SD3 layers). A tuple, not a slice: targets are hashable.
    """

    component: str
    path: str
    kind: ModuleKind
    weight_shape: tuple[int, ...]
    has_bias: bool
    rows: tuple[int, int | None] | None = None
    swap_halves: bool = False

    @property
    def is_text(self) -> bool:
        return self.component != UNET


def _kind(module: nn.Module) -> ModuleKind | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and module.weight is not None:
        return "norm"
    return None


def _targets(component: str, root: nn.Module, prefix: str = "") -> list[Target]:
    found = []
    for path, module in root.named_modules():
        kind = _kind(module)
        if kind is not None and path:
            # Low-bit layers (`modules.nn.lowbit`) know their shape without dequantizing.
            shape = getattr(module, "weight_shape", None) or module.weight.shape
            found.append(Target(component=component, path=prefix + path, kind=kind,
                                weight_shape=tuple(shape),
                                has_bias=getattr(module, "bias", None) is not None))
    return found


def text_prefixes(index: int, count: int) -> tuple[str, str]:
    """(kohya prefix, diffusers prefix) of the `index`-th of `count` text encoders."""
    kohya = "lora_te_" if count == 1 else f"lora_te{index + 1}_"
    diffusers = "text_encoder." if index == 0 else f"text_encoder_{index + 1}."
    return kohya, diffusers


def canonical_clip_path(path: str) -> str:
    """The path as `CLIPTextModel` names it in files (`text_model.encoder...`).

    Some transformers versions build `CLIPTextModel` without the `text_model` level;
    LoRA files always carry it (only `text_projection` sits beside it).
    """
    if path.startswith(("text_model.", "text_projection")):
        return path
    return "text_model." + path


class NameMap:
    """LoRA module name (any spelling) -> `Target`; built once per loaded model."""

    def __init__(self, *, model) -> None:
        """:param model: a `StableDiffusionModel` (real or on the meta device)."""
        self.targets: dict[str, Target] = {}
        if flow_names.is_transformer(model.unet):
            self._add_transformer(model.unet)
        else:
            self._add_unet(model)
        self._add_text_encoders(model)

    def _add(self, name: str, target: Target) -> None:
        known = self.targets.setdefault(name, target)
        if known != target:
            raise ValueError(f"LoRA name {name!r} would name both {known.path} and {target.path}")

    def _add_unet(self, model) -> None:
        targets = _targets(UNET, model.unet)
        diffusers = map_unet_keys_to_diffusers(
            [t.path + ".weight" for t in targets], model.family.unet).renames
        for target in targets:
            self._add("lora_unet_" + target.path.replace(".", "_"), target)
            name = diffusers.get(target.path + ".weight")
            if name is not None:
                path = name[: -len(".weight")]
                self._add("lora_unet_" + path.replace(".", "_"), target)
                self._add("unet." + path, target)

    def _add_transformer(self, network: nn.Module) -> None:
        """A Flux / MMDiT transformer: our paths, and diffusers' paths onto their rows."""
        targets = {target.path: target for target in _targets(UNET, network)}
        for target in targets.values():
            for name in flow_names.own_names(target.path):
                self._add(name, target)
        for module, place in flow_names.diffusers_placements(network):
            target = targets.get(place.path)
            if target is None:
                continue
            part = replace(target, rows=place.rows, swap_halves=place.swap_halves)
            for name in flow_names.diffusers_spellings(module):
                self._add(name, part)

    def _add_text_encoders(self, model) -> None:
        specs = model.family.text_encoders
        for index, spec in enumerate(specs):
            kohya, diffusers = text_prefixes(index, len(specs))
            encoder = model.text_encoders[spec.name]
            if isinstance(encoder, T5TextEncoder):
                self._add_t5(spec.name, encoder, diffusers)
                continue
            if not isinstance(encoder, TextEncoder):
                continue
            for target in _targets(spec.name, encoder.transformer, prefix="transformer."):
                path = target.path[len("transformer."):]
                hf_path = canonical_clip_path(path)
                self._add(kohya + hf_path.replace(".", "_"), target)
                self._add(diffusers + hf_path, target)
                self._add(diffusers + path, target)

    def _add_t5(self, name: str, encoder: T5TextEncoder, diffusers: str) -> None:
        for target in _targets(name, encoder.transformer, prefix="transformer."):
            path = target.path[len("transformer."):]
            self._add(T5_KOHYA_PREFIX + path.replace(".", "_"), target)
            self._add(diffusers + path, target)

    def get(self, name: str) -> Target | None:
        return self.targets.get(name)

    def __len__(self) -> int:
        return len(self.targets)
