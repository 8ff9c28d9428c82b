"""Reading checkpoints by path: headers for detection, state dicts for loading.

One entry point for every container a user drops in `models/Stable-diffusion/`:
`.safetensors`, pickled `.ckpt/.pt` (allow-listed, see `safe_unpickle`), and diffusers
folders (see `diffusers_folder`), always presented with LDM names. Standalone VAE
files come back with bare LDM VAE names (`encoder.*`, `decoder.*`, ...).

Every failure is a `ModelLoadError(path, reason)`: missing, empty, truncated,
garbage, a lying header, a plain directory, an unsupported architecture. This module
reads files; assembling networks from the tensors belongs to the model manager.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from modules.models.detection import detect_family
from modules.models.diffusers_folder import (
    COMPONENT_PREFIXES,
    component_weight_files,
    is_diffusers_folder,
    load_diffusers_state_dict,
    read_diffusers_header,
    read_json,
    vae_config_from_diffusers,
)
from modules.models.diffusers_keys import UnmappedKeysError, vae_diffusers_to_ldm
from modules.models.errors import ModelLoadError
from modules.models.families import VAE_PREFIX, Family, Prediction
from modules.models.safetensors_io import TensorInfo
from modules.models.single_file import load_file, read_file_header
from modules.nn.configs import VAEConfig

CheckpointFormat = Literal["safetensors", "pickle", "diffusers"]
# Old SD1 files lack the `text_model.` level that transformers' CLIP names have.
OLD_CLIP_PREFIX = "cond_stage_model.transformer."
VAE_DROPPED_PREFIXES = ("loss.", "model_ema.")


@dataclass(frozen=True)
class CheckpointHeader:
    """A checkpoint's tensors (LDM names -> shape/dtype) and metadata, without data."""

    path: str
    format: CheckpointFormat
    tensors: dict[str, TensorInfo]
    metadata: dict[str, object]


def read_checkpoint_header(path: str | os.PathLike[str]) -> CheckpointHeader:
    """Header-only for `.safetensors` and diffusers safetensors; pickles are memory-mapped."""
    path = os.fspath(path)
    if os.path.isdir(path):
        tensors, metadata = read_diffusers_header(path)
        return CheckpointHeader(path=path, format="diffusers", tensors=tensors, metadata=metadata)
    header = read_file_header(path)
    names = ldm_names(header.tensors)
    return CheckpointHeader(
        path=path,
        format=header.format,
        tensors={new: header.tensors[old] for new, old in names.items()},
        metadata=header.metadata,
    )


def load_state_dict(
    path: str | os.PathLike[str],
    *,
    keys: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """LDM-named tensors (all, or `keys`); floating ones cast to `dtype` as they are read."""
    path = os.fspath(path)
    wanted = None if keys is None else list(keys)
    if os.path.isdir(path):
        prefixes = None if wanted is None else _component_prefixes(wanted)
        tensors = load_diffusers_state_dict(path, prefixes=prefixes, dtype=dtype, device=device)
        return tensors if wanted is None else _select(tensors, wanted, path)
    names = ldm_names(read_file_header(path).tensors) if wanted is not None else None
    if names is not None:
        missing = [key for key in wanted if key not in names]
        if missing:
            raise ModelLoadError(path, f"no tensor named {missing[0]!r}")
        loaded = load_file(path, keys=[names[key] for key in wanted], dtype=dtype, device=device)
        return {key: loaded[names[key]] for key in wanted}
    loaded = load_file(path, dtype=dtype, device=device)
    return {new: loaded[old] for new, old in ldm_names(loaded).items()}


def inspect_checkpoint(
    path: str | os.PathLike[str], *, prediction: Prediction | None = None
) -> tuple[CheckpointHeader, Family]:
    """Header and detected family of a checkpoint; errors name the file."""
    header = read_checkpoint_header(path)
    family = detect_family(header.tensors, header.metadata, prediction=prediction, path=header.path)
    return header, family


def ldm_names(names: Iterable[str]) -> dict[str, str]:
    """Normalised name -> name in the file (old SD1 CLIP keys gain `text_model.`)."""
    out: dict[str, str] = {}
    for name in names:
        normalised = name
        if (name.startswith(OLD_CLIP_PREFIX)
                and not name.startswith(OLD_CLIP_PREFIX + "text_model.")):
            normalised = OLD_CLIP_PREFIX + "text_model." + name[len(OLD_CLIP_PREFIX):]
        out[normalised] = name
    return out


def _component_prefixes(keys: list[str]) -> tuple[str, ...]:
    return tuple(p for p in COMPONENT_PREFIXES.values() if any(k.startswith(p) for k in keys))


def _select(tensors: Mapping[str, torch.Tensor], keys: list[str],
            path: str) -> dict[str, torch.Tensor]:
    missing = [key for key in keys if key not in tensors]
    if missing:
        raise ModelLoadError(path, f"no tensor named {missing[0]!r}")
    return {key: tensors[key] for key in keys}


def load_vae_state_dict(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """A standalone VAE (LDM or diffusers layout, file or folder) with bare LDM VAE names."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_vae_folder(Path(path), dtype=dtype, device=device)
    tensors = load_file(path, dtype=dtype, device=device)
    if any(key.startswith(VAE_PREFIX) for key in tensors):  # a full checkpoint's VAE
        tensors = {k[len(VAE_PREFIX):]: v for k, v in tensors.items() if k.startswith(VAE_PREFIX)}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(VAE_DROPPED_PREFIXES)}
    if "encoder.conv_in.weight" in tensors and any(".down_blocks." in k for k in tensors):
        tensors = _vae_to_ldm(tensors, infer_diffusers_vae_config(tensors, path), path)
    if "decoder.conv_out.weight" not in tensors:
        raise ModelLoadError(path, "not a VAE (no decoder.conv_out.weight)")
    return tensors


def _load_vae_folder(folder: Path, *, dtype: torch.dtype | None,
                     device: str | torch.device) -> dict[str, torch.Tensor]:
    if is_diffusers_folder(folder):
        loaded = load_diffusers_state_dict(folder, prefixes=(VAE_PREFIX,), dtype=dtype,
                                           device=device)
        return {k[len(VAE_PREFIX):]: v for k, v in loaded.items()}
    if not (folder / "config.json").is_file():
        raise ModelLoadError(folder,
                             "a directory that is neither a diffusers folder nor a VAE folder")
    config = vae_config_from_diffusers(read_json(folder / "config.json"))
    tensors: dict[str, torch.Tensor] = {}
    for file in component_weight_files(folder.parent, folder.name):
        tensors.update(load_file(file, dtype=dtype, device=device))
    return _vae_to_ldm(tensors, config, os.fspath(folder))


def _vae_to_ldm(tensors: dict[str, torch.Tensor], config: VAEConfig,
                path: str) -> dict[str, torch.Tensor]:
    try:
        return vae_diffusers_to_ldm(tensors, config)
    except UnmappedKeysError as error:
        raise ModelLoadError(path, str(error.args[0])) from error


def infer_diffusers_vae_config(tensors: Mapping[str, torch.Tensor | TensorInfo],
                               path: str) -> VAEConfig:
    """A diffusers-layout VAE's config read from its shapes (standalone files have no config)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in tensors:
            raise ModelLoadError(path, f"diffusers VAE without {key}")
        return tuple(tensors[key].shape)

    ch = shape("encoder.conv_in.weight")[0]
    levels = sorted({int(k.split(".")[2]) for k in tensors if k.startswith("encoder.down_blocks.")})
    mult = tuple(shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] // ch for i in levels)
    blocks = {k.split(".")[4] for k in tensors if k.startswith("encoder.down_blocks.0.resnets.")}
    z_channels = shape("encoder.conv_out.weight")[0] // 2
    return VAEConfig(
        in_channels=shape("encoder.conv_in.weight")[1],
        out_channels=shape("decoder.conv_out.weight")[0],
        ch=ch,
        ch_mult=mult,
        num_res_blocks=len(blocks),
        z_channels=z_channels,
        embed_dim=(shape("quant_conv.weight")[0] // 2 if "quant_conv.weight" in tensors
                   else z_channels),
        norm_num_groups=VAEConfig().norm_num_groups,
        use_quant_conv="quant_conv.weight" in tensors,
    )
