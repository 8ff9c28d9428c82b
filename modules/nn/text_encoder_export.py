"""Text-encoder weights from transformers' CLIP names back to checkpoint names.

The inverse of `text_encoder_keys.convert_text_encoder_weights`, used when Easel writes
a single-file checkpoint (trained or merged models): CLIP-L goes out in transformers'
layout with `text_model.`, as real SD1 / SDXL files store it; OpenCLIP encoders (SD2,
SDXL bigG) go out in OpenCLIP's layout with q, k, v fused back into `in_proj` and the
projection transposed back to `x @ P` form.
"""

from __future__ import annotations

import re

import torch

from modules.nn.configs import TextEncoderConfig
from modules.nn.text_encoder_keys import OPEN_CLIP_TOP_LEVEL, RESBLOCK_RENAMES

_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_TO_OPEN_CLIP_TOP = {hf: oc for oc, hf in OPEN_CLIP_TOP_LEVEL.items()}
_TO_RESBLOCK = {hf: oc for oc, hf in RESBLOCK_RENAMES.items()}


def to_checkpoint_layout(state_dict: dict[str, torch.Tensor],
                         config: TextEncoderConfig) -> dict[str, torch.Tensor]:
    """`TextEncoder.transformer.state_dict()` -> names under the family prefix."""
    core = {_strip(k): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    if config.source_layout == "clip_l":
        return {("text_model." + k if k != "text_projection.weight" else k): v
                for k, v in core.items()}
    return _to_open_clip(core)


def _strip(key: str) -> str:
    return key[len("text_model."):] if key.startswith("text_model.") else key


def _to_open_clip(core: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in core.items():
        if key in _TO_OPEN_CLIP_TOP:
            out[_TO_OPEN_CLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.t().contiguous()
        elif (match := _HF_LAYER.fullmatch(key)) is not None:
            index, module, kind = int(match.group(1)), match.group(2), match.group(3)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                fused.setdefault((index, kind), {})[module[-6]] = tensor
            else:
                out[f"transformer.resblocks.{index}.{_TO_RESBLOCK[module]}.{kind}"] = tensor
        else:
            raise KeyError(f"no OpenCLIP name for text-encoder weight {key!r}")
    # OpenCLIP keeps q, k, v as one fused projection, rows in that order.
    for (index, kind), parts in fused.items():
        out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out
