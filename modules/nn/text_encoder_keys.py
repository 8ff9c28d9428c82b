"""Text-encoder weights from checkpoint names to transformers' CLIP names.

Checkpoints store a CLIP text tower in one of three layouts (family prefix stripped):

* transformers' own, as in SD1 / SDXL CLIP-L single files and diffusers folders:
  `text_model.embeddings.token_embedding.weight`, `text_model.encoder.layers.N...`,
  `text_model.final_layer_norm.*`, and for diffusers' `text_encoder_2`
  `text_projection.weight`. Very old SD1 files lack the `text_model.` part.
* OpenCLIP's, as in SD2 (`cond_stage_model.model.`) and SDXL bigG
  (`conditioner.embedders.1.model.`): `token_embedding.weight`, `positional_embedding`,
  `transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc,
  mlp.c_proj}`, `ln_final`, `text_projection` ([width, proj], used as x @ P).

Both become the state-dict names of transformers 5's `CLIPTextModel` (`embeddings.*`,
`encoder.layers.N.*`, `final_layer_norm.*`: no `text_model.` in v5) or, with a
projection, `CLIPTextModelWithProjection` (`text_model.` + those, `text_projection.weight`).
OpenCLIP's fused `in_proj` is split in three row blocks q, k, v; `text_projection` is
transposed into a Linear weight.

Known extras that are deliberately not loaded are listed as `ignored`:
`position_ids` (regenerated as arange at run time: merged files carry broken ones),
`logit_scale`, `attn_mask` (OpenCLIP buffer), `text_projection` when the encoder has no
projection (SD1, SD2: only the pooled bigG output is projected), and resblocks / layers
beyond the config's `num_layers`. Every other unrecognised key is `unknown`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from modules.nn.configs import TextEncoderConfig

HF_PREFIX = "text_model."
# OpenCLIP resblock sub-module names -> transformers' CLIPEncoderLayer names.
RESBLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
OPEN_CLIP_TOP_LEVEL = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
ALWAYS_IGNORED = ("logit_scale", "attn_mask", "embeddings.position_ids")
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_HF_TOP_LEVEL = frozenset({
    "embeddings.token_embedding.weight",
    "embeddings.position_embedding.weight",
    "final_layer_norm.weight",
    "final_layer_norm.bias",
})
_HF_LAYER_MODULES = frozenset({
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
    "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2",
})


@dataclass(frozen=True)
class ConvertedWeights:
    """Tensors under transformers' names plus what was left out, and why."""

    tensors: dict[str, torch.Tensor]
    ignored: tuple[str, ...]
    unknown: tuple[str, ...]


def is_open_clip_layout(keys) -> bool:
    """True when the keys are OpenCLIP's (`transformer.resblocks`, `positional_embedding`)."""
    return any(k.startswith("transformer.resblocks.") or k == "positional_embedding" for k in keys)


def convert_text_encoder_weights(
    state_dict: dict[str, torch.Tensor], *, config: TextEncoderConfig
) -> ConvertedWeights:
    """Rename (and split / transpose) one text encoder's weights for the HF CLIP module.

    `state_dict` has the family prefix already stripped. The result's names are those
    of `CLIPTextModel` (no projection) or `CLIPTextModelWithProjection` (projection).
    """
    if is_open_clip_layout(state_dict):
        core, ignored, unknown = _from_open_clip(state_dict, config)
    else:
        core, ignored, unknown = _from_transformers(state_dict, config)
    # The projection exists only when the config asks for a projected pooled output.
    if "text_projection.weight" in core and config.projection_dim is None:
        del core["text_projection.weight"]
        ignored.append("text_projection")
    if config.projection_dim is not None:
        core = {
            (k if k == "text_projection.weight" else HF_PREFIX + k): v for k, v in core.items()
        }
    return ConvertedWeights(core, tuple(ignored), tuple(unknown))


def _from_open_clip(state_dict, config: TextEncoderConfig):
    core: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if key in OPEN_CLIP_TOP_LEVEL:
            core[OPEN_CLIP_TOP_LEVEL[key]] = tensor
        elif key == "text_projection":
            # OpenCLIP multiplies x @ P; a Linear computes x @ W.T, so W = P.T.
            core["text_projection.weight"] = tensor.t().contiguous()
        elif key in ALWAYS_IGNORED:
            ignored.append(key)
        elif (match := _RESBLOCK.fullmatch(key)) is not None:
            index, rest = int(match.group(1)), match.group(2)
            if index >= config.num_layers:
                ignored.append(key)
                continue
            renamed = _resblock_tensors(rest, tensor)
            if renamed is None:
                unknown.append(key)
                continue
            for name, value in renamed.items():
                core[f"encoder.layers.{index}.{name}"] = value
        else:
            unknown.append(key)
    return core, ignored, unknown


def _resblock_tensors(rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One resblock tensor under its HF name(s); the fused in_proj becomes q, k, v."""
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]
        query, key, value = tensor.chunk(3, dim=0)
        return {
            f"self_attn.q_proj.{kind}": query,
            f"self_attn.k_proj.{kind}": key,
            f"self_attn.v_proj.{kind}": value,
        }
    module, _, param = rest.rpartition(".")
    if module in RESBLOCK_RENAMES and param in ("weight", "bias"):
        return {f"{RESBLOCK_RENAMES[module]}.{param}": tensor}
    return None


def _from_transformers(state_dict, config: TextEncoderConfig):
    core: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        # `text_model.` is present in current files and missing in very old SD1 ones.
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if name in ALWAYS_IGNORED:
            ignored.append(key)
        elif name == "text_projection.weight" or name in _HF_TOP_LEVEL:
            core[name] = tensor
        elif (match := _HF_LAYER.fullmatch(name)) is not None:
            if int(match.group(1)) >= config.num_layers:
                ignored.append(key)
            elif _is_hf_layer_param(match.group(2)):
                core[name] = tensor
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    return core, ignored, unknown


def _is_hf_layer_param(rest: str) -> bool:
    module, _, param = rest.rpartition(".")
    return module in _HF_LAYER_MODULES and param in ("weight", "bias")
