"""ControlNet weight files: layout detection, config from shapes, safe loading.

A ControlNet (Zhang et al., 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models") comes in two layouts (docs/model-formats.md, "ControlNet files"):

- LDM (lllyasviel's `control_*.pth`, `control_v11p_sd15_*.pth`, their `.safetensors`
  conversions): `control_model.` + `cldm.ControlNet` names, or the same names with the
  prefix stripped (extracted / fp16 files). v1.0 "full" files also hold a whole SD model;
  only `control_model.*` is read from them.
- diffusers (`ControlNetModel`, `diffusion_pytorch_model.safetensors`):
  `controlnet_cond_embedding`, `controlnet_down_blocks`, ... renamed to LDM names by
  `modules.models.diffusers_keys.map_controlnet_keys`.

The architecture is read from the header alone (shapes, never tensor data): the number
of levels and blocks, widths, transformer depths, context width, conv or linear
projections, SDXL's `label_emb`. Head counts are not in the shapes; they come from the
base model's U-Net config (SD1: 8 heads; SD2/SDXL: 64 channels per head by default).
Files go through `single_file.load_file` (strict safetensors reader, allow-listed
unpickler), never through unrestricted unpickling.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from modules.models.diffusers_keys import UnmappedKeysError, map_controlnet_keys
from modules.models.errors import ModelLoadError
from modules.models.single_file import load_file, read_file_header
from modules.nn.configs import UNetConfig
from modules.nn.controlnet import ControlNet, ControlNetConfig

LDM_PREFIX = "control_model."
Layout = Literal["ldm", "diffusers"]
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class ControlNetHeader:
    """What a ControlNet file is, from its header: layout, config, and file key -> LDM name."""

    path: str
    layout: Layout
    config: ControlNetConfig
    names: dict[str, str]  # key in the file -> `cldm.ControlNet` parameter name

    @property
    def is_sdxl(self) -> bool:
        return self.config.unet.adm_in_channels is not None


def _unsupported_kind(keys: set[str]) -> str | None:
    """A name for the adapter kinds this loader does not run.

    See docs/model-formats.md, "ControlNet files"."""
    if any("lora_controlnet" in key for key in keys):
        return "a Control-LoRA"
    if "difference" in keys:
        return "a 'difference' ControlNet (deltas against a base U-Net)"
    if "conv_in.weight" in keys and "body.0.block2.weight" in keys:
        return "a T2I-Adapter"
    if any(key.startswith(("adapter.", "ip_adapter", "image_proj.")) for key in keys):
        return "an adapter (T2I-Adapter / IP-Adapter)"
    return None


def _ldm_names(keys: list[str], path: str) -> dict[str, str] | None:
    """file key -> LDM name for the LDM layout, with or without `control_model.`."""
    prefixed = [key for key in keys if key.startswith(LDM_PREFIX)]
    if prefixed:
        return {key: key[len(LDM_PREFIX):] for key in prefixed}
    if "input_hint_block.0.weight" in keys:
        return {key: key for key in keys}
    return None


def _int_parts(keys, pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(match.group(1)) for key in keys if (match := regex.match(key))}


def _diffusers_structure(keys: list[str], path: str) -> UNetConfig:
    """Counts that decide diffusers names (levels, blocks, attention, ADM), no widths."""
    levels = len(_int_parts(keys, r"down_blocks\.(\d+)\."))
    if levels == 0:
        raise ModelLoadError(path, "diffusers ControlNet without down_blocks")
    depths = tuple(
        len(_int_parts(keys, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\."))
        for i in range(levels)
    )
    return UNetConfig(
        channel_mult=(1,) * levels,
        num_res_blocks=len(_int_parts(keys, r"down_blocks\.0\.resnets\.(\d+)\.")),
        transformer_depth=depths,
        transformer_depth_middle=len(
            _int_parts(keys, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")),
        adm_in_channels=1 if "add_embedding.linear_1.weight" in keys else None,
    )


def _heads(base: UNetConfig | None, use_linear: bool, context_dim: int) -> dict:
    if base is not None:
        return dict(num_heads=base.num_heads, num_head_channels=base.num_head_channels,
                    norm_num_groups=base.norm_num_groups)
    if not use_linear and context_dim == 768:  # SD1
        return dict(num_heads=8, num_head_channels=None)
    return dict(num_heads=None, num_head_channels=64)


def _transformer_depth(shapes: Shapes, prefix: str) -> int:
    return len(_int_parts(shapes, re.escape(prefix) + r"transformer_blocks\.(\d+)\."))


def infer_controlnet_config(shapes: Shapes, *, base: UNetConfig | None = None,
                            path: str = "<state dict>") -> ControlNetConfig:
    """The `ControlNetConfig` of LDM-named tensor shapes (header-only)."""
    try:
        first = shapes["input_blocks.0.0.weight"]
        hint_first = shapes["input_hint_block.0.weight"]
    except KeyError as missing:
        raise ModelLoadError(path, f"not a ControlNet: no {missing.args[0]}") from None
    model_channels, in_channels = first[0], first[1]
    hint_convs = sorted(_int_parts(shapes, r"input_hint_block\.(\d+)\.weight"))
    widths = tuple(shapes[f"input_hint_block.{i}.weight"][0] for i in hint_convs[:-1:2])
    blocks = max(_int_parts(shapes, r"input_blocks\.(\d+)\.")) + 1
    levels = len(_int_parts(shapes, r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    n = blocks // levels - 1
    mult, depth, context_dim, use_linear = [], [], None, False
    for level in range(levels):
        block = 1 + level * (n + 1)
        mult.append(shapes[f"input_blocks.{block}.0.in_layers.2.weight"][0] // model_channels)
        depth.append(_transformer_depth(shapes, f"input_blocks.{block}.1."))
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight"):
            context_dim = shape[1]
        if key.endswith(".1.proj_in.weight"):
            use_linear = len(shape) == 2
    if context_dim is None:
        context_dim = base.context_dim if base is not None else 768
    adm = shapes.get("label_emb.0.0.weight")
    unet = UNetConfig(
        in_channels=in_channels, model_channels=model_channels, channel_mult=tuple(mult),
        num_res_blocks=n, transformer_depth=tuple(depth),
        transformer_depth_middle=_transformer_depth(shapes, "middle_block.1."),
        context_dim=context_dim, use_linear_in_transformer=use_linear,
        adm_in_channels=None if adm is None else adm[1],
        **_heads(base, use_linear, context_dim),
    )
    return ControlNetConfig(unet=unet, hint_channels=hint_first[1], hint_block_channels=widths)


def inspect_controlnet(path: str | os.PathLike[str], *,
                       base: UNetConfig | None = None) -> ControlNetHeader:
    """Layout and architecture of a ControlNet file, from its header only."""
    header = read_file_header(path)
    path = header.path
    keys = list(header.tensors)
    kind = _unsupported_kind(set(keys))
    if kind is not None:
        raise ModelLoadError(path, f"{kind} is not supported; expected a ControlNet")
    names = _ldm_names(keys, path)
    layout: Layout = "ldm"
    if names is None:
        if "controlnet_cond_embedding.conv_in.weight" not in keys:
            raise ModelLoadError(path, "not a ControlNet (no input_hint_block / "
                                       "controlnet_cond_embedding weights)")
        mapping = map_controlnet_keys(keys, _diffusers_structure(keys, path))
        if mapping.unmapped:
            raise ModelLoadError(path, str(UnmappedKeysError("diffusers ControlNet",
                                                             mapping.unmapped)))
        names, layout = mapping.renames, "diffusers"
    shapes = {names[key]: tuple(header.tensors[key].shape) for key in names}
    config = infer_controlnet_config(shapes, base=base, path=path)
    return ControlNetHeader(path=path, layout=layout, config=config, names=names)


def check_compatible(header: ControlNetHeader, base: UNetConfig) -> None:
    """Raise a `ModelLoadError` when the ControlNet's residuals cannot fit this U-Net."""
    cn = header.config.unet
    family = lambda c: "SDXL" if c.adm_in_channels is not None else (  # noqa: E731
        "SD2" if c.use_linear_in_transformer else "SD1")
    structure = lambda c: (c.model_channels, c.channel_mult, c.num_res_blocks,  # noqa: E731
                           c.context_dim, c.adm_in_channels is None)
    if structure(cn) != structure(base):
        raise ModelLoadError(header.path, f"this ControlNet is for {family(cn)} (context "
                                          f"{cn.context_dim}) but the loaded model is "
                                          f"{family(base)} (context {base.context_dim})")


def load_controlnet(path: str | os.PathLike[str], *, base: UNetConfig | None = None,
                    device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> ControlNet:
    """A ready `ControlNet` (eval mode) from a file in either layout."""
    header = inspect_controlnet(path, base=base)
    if base is not None:
        check_compatible(header, base)
    tensors = load_file(header.path, keys=list(header.names), dtype=dtype, device=device)
    state = {header.names[key]: tensor for key, tensor in tensors.items()}
    with torch.device("meta"):
        model = ControlNet(config=header.config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ModelLoadError(header.path, f"weights do not fit the inferred ControlNet: "
                                          f"{str(error)[:500]}") from None
    return model.eval().requires_grad_(False)


