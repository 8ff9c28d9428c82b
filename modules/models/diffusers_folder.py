"""Reading a diffusers pipeline folder as if it were one LDM single-file checkpoint.

A diffusers folder (`model_index.json` plus `unet/`, `vae/`, `text_encoder/`,
`text_encoder_2/` subfolders, each with a `config.json` and `.safetensors` or `.bin`
weights, possibly sharded with an `*.index.json`) is presented with LDM names so the
rest of Easel sees one layout:

* `unet/*`  -> `model.diffusion_model.*` (renamed by `diffusers_keys`)
* `vae/*`   -> `first_stage_model.*` (renamed by `diffusers_keys`)
* `text_encoder/*`, `text_encoder_2/*` -> transformers names (always with the
  `text_model.` level, which transformers 5 omits when saving) under the
  prefixes `text_encoder.` and `text_encoder_2.` (not converted: they already are in
  the layout our CLIP classes load; detection returns a family whose text-encoder
  specs point at these prefixes with `source_layout="clip_l"`).

The scheduler's `prediction_type` and `rescale_betas_zero_snr` become the metadata
keys `prediction_type` and `ztsnr` that detection reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from modules.models.diffusers_keys import (
    UnmappedKeysError,
    unet_diffusers_to_ldm,
    vae_diffusers_to_ldm,
)
from modules.models.errors import ModelLoadError
from modules.models.families import UNET_PREFIX, VAE_PREFIX
from modules.models.safetensors_io import TensorInfo
from modules.models.single_file import load_file, read_file_header
from modules.nn.configs import UNetConfig, VAEConfig

MODEL_INDEX = "model_index.json"
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")
COMPONENT_PREFIXES = {
    "unet": UNET_PREFIX,
    "vae": VAE_PREFIX,
    "text_encoder": "text_encoder.",
    "text_encoder_2": "text_encoder_2.",
}
# Preference order inside one component folder; the first that exists is used.
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "pytorch_model.bin.index.json",
)


def is_diffusers_folder(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_INDEX))


def read_diffusers_header(
    folder: str | os.PathLike[str],
) -> tuple[dict[str, TensorInfo], dict[str, object]]:
    """LDM-named header of the whole folder, and its metadata."""
    folder = Path(folder)
    tensors: dict[str, TensorInfo] = {}
    for component in _components(folder):
        part: dict[str, TensorInfo] = {}
        for file in component_weight_files(folder, component):
            part.update(read_file_header(file).tensors)
        tensors.update(_header_to_ldm(folder, component, part))
    return tensors, _metadata(folder)


def load_diffusers_state_dict(
    folder: str | os.PathLike[str],
    *,
    prefixes: tuple[str, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """LDM-named tensors of the folder; only components whose prefix is in `prefixes`."""
    folder = Path(folder)
    out: dict[str, torch.Tensor] = {}
    for component in _components(folder):
        if prefixes is not None and COMPONENT_PREFIXES[component] not in prefixes:
            continue
        part: dict[str, torch.Tensor] = {}
        for file in component_weight_files(folder, component):
            part.update(load_file(file, dtype=dtype, device=device))
        out.update(_to_ldm(folder, component, part))
    return out


def _components(folder: Path) -> list[str]:
    if not is_diffusers_folder(folder):
        raise ModelLoadError(folder, f"a directory without {MODEL_INDEX} is not a diffusers folder")
    index = read_json(folder / MODEL_INDEX)
    present = [name for name in COMPONENT_PREFIXES if name in index and (folder / name).is_dir()]
    for required in ("unet", "vae"):
        if required not in present:
            raise ModelLoadError(folder, f"diffusers folder has no {required}/ component")
    return present


def component_weight_files(folder: Path, component: str) -> list[Path]:
    """The weight file of a component, or its shards listed by the index file."""
    directory = folder / component
    for name in WEIGHT_NAMES:
        candidate = directory / name
        if not candidate.is_file():
            continue
        if not name.endswith(".index.json"):
            return [candidate]
        weight_map = read_json(candidate).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(candidate, "sharded index has no weight_map")
        shards = sorted(set(map(str, weight_map.values())))
        return [_inside(directory, shard, candidate) for shard in shards]
    raise ModelLoadError(directory, "no weights file (diffusion_pytorch_model.safetensors, ...)")


def _inside(directory: Path, name: str, index: Path) -> Path:
    """A shard path from an index file; it must stay inside the component folder."""
    shard = (directory / name).resolve()
    if shard.parent != directory.resolve():
        raise ModelLoadError(index, f"shard {name!r} points outside its folder")
    return shard


def _to_ldm(folder: Path, component: str,
            part: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename one component's tensors to their LDM names under the component's prefix."""
    prefix = COMPONENT_PREFIXES[component]
    if component in TEXT_ENCODER_FOLDERS:
        return {prefix + _hf_text_name(key): value for key, value in part.items()}
    config = read_json(folder / component / "config.json")
    try:
        if component == "unet":
            renamed = unet_diffusers_to_ldm(part, unet_config_from_diffusers(config))
        else:
            renamed = vae_diffusers_to_ldm(part, vae_config_from_diffusers(config))
    except UnmappedKeysError as error:
        raise ModelLoadError(folder / component, str(error.args[0])) from error
    return {prefix + key: value for key, value in renamed.items()}


def _hf_text_name(key: str) -> str:
    """Files from transformers 5 drop the `text_model.` level; real repos keep it. Use it."""
    if key.startswith(("text_model.", "text_projection.", "logit_scale")):
        return key
    return "text_model." + key


def _header_to_ldm(folder: Path, component: str,
                   part: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
    """The same renaming for a header: meta tensors carry shapes through it, no data."""
    meta = {key: torch.empty(info.shape, dtype=info.torch_dtype, device="meta")
            for key, info in part.items()}
    return {key: TensorInfo.of(tensor) for key, tensor in _to_ldm(folder, component, meta).items()}


def _metadata(folder: Path) -> dict[str, object]:
    metadata: dict[str, object] = {"diffusers.model_index": read_json(folder / MODEL_INDEX)}
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        config = read_json(scheduler)
        if config.get("prediction_type"):
            metadata["prediction_type"] = config["prediction_type"]
        if config.get("rescale_betas_zero_snr"):
            metadata["ztsnr"] = True
    return metadata


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(path, f"cannot read JSON ({error})") from error
    if not isinstance(value, dict):
        raise ModelLoadError(path, "JSON is not an object")
    return value


def unet_config_from_diffusers(config: Mapping[str, object]) -> UNetConfig:
    """Our `UNetConfig` from a diffusers `unet/config.json`."""
    channels = [int(c) for c in config.get("block_out_channels", (320, 640, 1280, 1280))]
    levels = len(channels)
    has_attention = ["CrossAttn" in str(kind) for kind in config.get("down_block_types", ())]
    per_level = _per_level(config.get("transformer_layers_per_block", 1), levels)
    # diffusers' `attention_head_dim` is really the head count (num_attention_heads wins)
    heads = _per_level(config.get("num_attention_heads") or config.get("attention_head_dim", 8),
                       levels)
    attended = [i for i in range(levels) if has_attention[i]] or [0]
    num_heads: int | None = heads[attended[0]]
    head_channels: int | None = None
    if len({heads[i] for i in attended}) > 1:
        num_heads, head_channels = None, channels[attended[0]] // heads[attended[0]]
    mid_block = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    mid_attention = mid_block == "UNetMidBlock2DCrossAttn"
    adm = config.get("projection_class_embeddings_input_dim")
    return UNetConfig(
        in_channels=int(config.get("in_channels", 4)),
        out_channels=int(config.get("out_channels", 4)),
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=int(config.get("layers_per_block", 2)),
        transformer_depth=tuple(per_level[i] if has_attention[i] else 0 for i in range(levels)),
        transformer_depth_middle=per_level[-1] if mid_attention else 0,
        context_dim=int(config.get("cross_attention_dim", 768)),
        num_heads=num_heads,
        num_head_channels=head_channels,
        use_linear_in_transformer=bool(config.get("use_linear_projection", False)),
        adm_in_channels=(int(adm) if config.get("addition_embed_type") == "text_time" and adm
                         else None),
        norm_num_groups=int(config.get("norm_num_groups", 32)),
    )


def vae_config_from_diffusers(config: Mapping[str, object]) -> VAEConfig:
    """Our `VAEConfig` from a diffusers `vae/config.json`."""
    channels = [int(c) for c in config.get("block_out_channels", (128, 256, 512, 512))]
    latent = int(config.get("latent_channels", 4))
    return VAEConfig(
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)),
        ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=int(config.get("layers_per_block", 2)),
        z_channels=latent,
        embed_dim=latent,
        norm_num_groups=int(config.get("norm_num_groups", 32)),
        scale_factor=float(config.get("scaling_factor", 0.18215)),
        shift_factor=float(config.get("shift_factor") or 0.0),
        use_quant_conv=bool(config.get("use_quant_conv", True)),
    )


def _per_level(value: object, levels: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)] * levels
