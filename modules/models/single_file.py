"""One weights file, whatever its container: `.safetensors`, or a pickled `.ckpt/.pt/.bin`.

This is the format layer under `loader.py`: it returns flat `name -> tensor` dicts
(pickles are unwrapped from their `state_dict` nesting) and knows nothing of model
families. Pickles go through `safe_unpickle` only; `.safetensors` through our strict
header reader. Non-tensor scalars of a training checkpoint (`global_step`, `epoch`)
are kept as metadata because detection can use them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from modules.models.errors import ModelLoadError
from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.models.safetensors_io import (
    DTYPE_NAMES,
    TensorInfo,
    load_safetensors,
    read_safetensors_header,
)

FileFormat = Literal["safetensors", "pickle"]
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class FileHeader:
    """Names, shapes and dtypes of one file's tensors, and its metadata."""

    path: str
    format: FileFormat
    tensors: dict[str, TensorInfo]
    metadata: dict[str, object]


def file_format(path: str | os.PathLike[str]) -> FileFormat:
    """Decide the container from the first bytes, not the suffix (users rename files)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(path, "file not found")
    if os.path.isdir(path):
        raise ModelLoadError(path, "is a directory, not a weights file")
    with open(path, "rb") as stream:
        head = stream.read(9)
    if not head:
        raise ModelLoadError(path, "empty file")
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte length, then the JSON header
        return "safetensors"
    if head.startswith(b"PK") or head[:1] == b"\x80":  # zip archive / pickle protocol >= 2
        return "pickle"
    if path.lower().endswith(SAFETENSORS_SUFFIXES):
        return "safetensors"  # let the header reader give the precise reason
    raise ModelLoadError(path, "unrecognised file format (neither safetensors nor a torch pickle)")


def read_file_header(path: str | os.PathLike[str]) -> FileHeader:
    """Header of one file. For pickles the tensors are memory-mapped, so no data is read."""
    path = os.fspath(path)
    if file_format(path) == "safetensors":
        header = read_safetensors_header(path)
        return FileHeader(path=path, format="safetensors", tensors=header.tensors,
                          metadata=header.metadata)
    tensors, metadata = unwrap_checkpoint(load_pickle_checkpoint(path), path)
    return FileHeader(
        path=path,
        format="pickle",
        tensors={name: _info(tensor, name, path) for name, tensor in tensors.items()},
        metadata=metadata,
    )


def load_file(
    path: str | os.PathLike[str],
    *,
    keys: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Tensors of one file (all, or `keys`), floating ones cast to `dtype`, one at a time."""
    path = os.fspath(path)
    if file_format(path) == "safetensors":
        return load_safetensors(path, keys=keys, dtype=dtype, device=device)
    tensors, _ = unwrap_checkpoint(load_pickle_checkpoint(path), path)
    names = list(tensors) if keys is None else list(keys)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name not in tensors:
            raise ModelLoadError(path, f"no tensor named {name!r}")
        # pop: drop our reference to the (memory-mapped) source as soon as it is copied
        out[name] = cast_tensor(tensors.pop(name), dtype=dtype, device=device)
    return out


def cast_tensor(tensor: torch.Tensor, *, dtype: torch.dtype | None,
                device: str | torch.device) -> torch.Tensor:
    """A new tensor on `device`; floating tensors take `dtype`, integer ones keep theirs."""
    target = dtype if dtype is not None and tensor.dtype.is_floating_point else tensor.dtype
    return tensor.detach().to(device=device, dtype=target, copy=True)


def unwrap_checkpoint(obj: Any, path: str) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """`{"state_dict": {...}, "global_step": n}` (nested any depth) -> (tensors, scalars)."""
    metadata: dict[str, object] = {}
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        metadata.update(_scalars(obj))
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelLoadError(path, f"not a state dict (the file holds a {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    metadata.update(_scalars(obj))
    if not tensors:
        raise ModelLoadError(path, "no tensors in the file")
    return tensors, metadata


def _scalars(mapping: Mapping[Any, Any]) -> dict[str, object]:
    return {str(k): v for k, v in mapping.items()
            if isinstance(v, (int, float, str, bool)) and not isinstance(v, torch.Tensor)}


def _info(tensor: torch.Tensor, name: str, path: str) -> TensorInfo:
    if tensor.dtype not in DTYPE_NAMES:
        raise ModelLoadError(path, f"tensor {name!r} has unsupported dtype {tensor.dtype}")
    return TensorInfo(shape=tuple(tensor.shape), dtype=DTYPE_NAMES[tensor.dtype])
