"""Reading LoRA-family files into per-layer groups of tensors.

A file is a flat dict of tensors. kohya / LyCORIS keys are `<module name>.<suffix>`
with no dot in the module name (`lora_unet_..._to_q.lora_down.weight`, `....alpha`,
`....hada_w1_a`); diffusers / PEFT keys keep the dotted module path and end in one of
a few suffix spellings (`.lora_A.weight`, `.lora.down.weight`,
`.processor.to_q_lora.down.weight`, ...), which are normalised here to kohya's
(`lora_down.weight` / `lora_up.weight`), so that the adapter math sees one layout.
`bundle_emb.*` (textual inversions bundled into a LoRA) are set apart. Flux / SD3 files
use the roots `transformer.` (diffusers, PEFT, AI-toolkit) and `diffusion_model.` (ComfyUI).

Pickled files (`.pt`, `.ckpt`) go through the allow-list unpickler only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.models.safetensors_io import load_safetensors, read_safetensors_header

# diffusers / PEFT key endings -> kohya suffixes, longest first.
DIFFUSERS_SUFFIXES = (
    ("_lora.down.weight", "lora_down.weight"),  # attention processors: to_q_lora.down
    ("_lora.up.weight", "lora_up.weight"),
    (".lora_linear_layer.down.weight", "lora_down.weight"),
    (".lora_linear_layer.up.weight", "lora_up.weight"),
    (".lora_A.weight", "lora_down.weight"),
    (".lora_B.weight", "lora_up.weight"),
    (".lora.down.weight", "lora_down.weight"),
    (".lora.up.weight", "lora_up.weight"),
    (".lora_down.weight", "lora_down.weight"),
    (".lora_up.weight", "lora_up.weight"),
    (".lora_magnitude_vector", "lora_magnitude_vector"),
    (".dora_scale", "dora_scale"),
    (".alpha", "alpha"),
)
# Flux / SD3 transformers: diffusers' `transformer.` and ComfyUI's `diffusion_model.`.
DIFFUSERS_ROOTS = ("unet.", "text_encoder.", "text_encoder_2.", "text_encoder_3.",
                   "transformer.", "diffusion_model.")
BARE_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.")  # old attn-proc files
# PEFT state dicts of a Flux / SD3 transformer saved without the `transformer.` prefix.
BARE_TRANSFORMER_ROOTS = ("transformer_blocks.", "single_transformer_blocks.")


@dataclass
class NetworkTensors:
    """A file's tensors grouped by module name, plus what was set apart."""

    groups: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    bundled_embeddings: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a network file and its safetensors metadata (empty for pickles)."""
    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        header = read_safetensors_header(path)
        tensors = load_safetensors(path, header=header)
        return tensors, {str(k): str(v) for k, v in header.metadata.items()}
    loaded = load_pickle_checkpoint(path, mmap=False)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: not a dict of tensors")
    return {str(k): v for k, v in loaded.items() if isinstance(v, Tensor)}, {}


def _diffusers_name(key: str) -> tuple[str, str] | None:
    """(module path, kohya suffix) of a diffusers / PEFT key, or None."""
    for ending, suffix in DIFFUSERS_SUFFIXES:
        if key.endswith(ending):
            module = key[: -len(ending)]
            if module.startswith(BARE_UNET_ROOTS):
                module = "unet." + module
            elif module.startswith(BARE_TRANSFORMER_ROOTS):
                module = "transformer." + module
            # Attention-processor spellings: `attn1.processor.to_q`, `to_out` (no index).
            module = module.replace(".processor.", ".")
            if module.endswith(".to_out"):
                module += ".0"
            return module, suffix
    return None


def split_key(key: str) -> tuple[str, str] | None:
    """(module name, suffix) of one key, in kohya's spelling; None if not a LoRA key."""
    if key.startswith(DIFFUSERS_ROOTS + BARE_UNET_ROOTS + BARE_TRANSFORMER_ROOTS):
        return _diffusers_name(key)
    if "." in key:
        name, suffix = key.split(".", 1)
        return name, suffix
    return None


def group_tensors(tensors: dict[str, Tensor],
                  metadata: dict[str, str] | None = None) -> NetworkTensors:
    result = NetworkTensors(metadata=dict(metadata or {}))
    for key, tensor in tensors.items():
        if key.startswith("bundle_emb."):
            _, name, rest = key.split(".", 2)
            result.bundled_embeddings.setdefault(name, {})[rest] = tensor
            continue
        split = split_key(key)
        if split is None:
            result.unknown_keys.append(key)
            continue
        name, suffix = split
        result.groups.setdefault(name, {})[suffix] = tensor
    return result


def load_network_file(path: str | os.PathLike[str]) -> NetworkTensors:
    """Read and group one file; raises on unreadable or damaged files."""
    tensors, metadata = read_tensors(path)
    return group_tensors(tensors, metadata)


def file_stamp(path: Path) -> tuple[str, int, int]:
    """(absolute path, mtime ns, size): what a cached read of the file is valid for."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size
