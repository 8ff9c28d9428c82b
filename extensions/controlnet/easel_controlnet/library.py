"""Control model files under `models/ControlNet/` (or `--controlnet-dir`), and a cache.

The folder holds ControlNets, T2I-Adapters and IP-Adapters side by side, as the
ControlNet extension's does; each entry knows its `kind`, read from the file's header
(key names only, never tensor data): `is_t2i_adapter` / `is_ip_adapter` decide, anything
else is a ControlNet (whose loader then explains a file it cannot use). Kinds are kept
per file, mtime and size in a `KindCache` owned by whoever lists (the script, the API).

Names follow the ControlNet extension: `"<file stem> [<hash8>]"`, the hash being
A1111's legacy 8-hex model hash, so API clients can send back what `model_list` gave
them; a bare stem (no hash) is accepted too. `annotators/` holds preprocessor weights,
not control models, and is skipped.

`ControlNetCache` keeps the last few loaded models (per file, mtime, kind, base model
shape, device and dtype) on the script instance that owns it: one per Runtime, no
module globals. Each kind loads with its own loader (`LOADERS`); CLIP image encoders
from `models/clip_vision/` go through the same cache as kind "clip_vision".
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from modules.models.controlnet_files import load_controlnet
from modules.models.errors import ModelLoadError
from modules.models.folders import walk_files
from modules.models.hashes import legacy_model_hash
from modules.models.ip_adapter_files import is_ip_adapter, load_clip_vision, load_ip_adapter
from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.models.safetensors_io import read_safetensors_header
from modules.models.single_file import file_format
from modules.models.t2i_adapter_files import is_t2i_adapter, load_t2i_adapter
from modules.nn.configs import UNetConfig

SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")
ANNOTATORS = "annotators"
Kind = Literal["controlnet", "t2i_adapter", "ip_adapter"]


@dataclass(frozen=True)
class ModelEntry:
    name: str  # "stem [hash8]"
    path: Path
    kind: Kind = "controlnet"

    @property
    def stem(self) -> str:
        return self.path.stem


def _flat_keys(obj: Mapping, prefix: str = "") -> Iterable[str]:
    """Tensor names of a (nested) state dict: IP-Adapter `.bin` files hold
    `{"image_proj": {...}, "ip_adapter": {...}}`, named here `image_proj.<key>`."""
    for key, value in obj.items():
        if isinstance(value, Mapping):
            yield from _flat_keys(value, f"{prefix}{key}.")
        elif isinstance(value, torch.Tensor):
            yield f"{prefix}{key}"


def header_keys(path: Path) -> list[str]:
    """A file's tensor names: the safetensors header, or a pickle's structure (allow-list
    unpickler, memory-mapped: no tensor data is read)."""
    if file_format(os.fspath(path)) == "safetensors":
        return list(read_safetensors_header(os.fspath(path)).tensors)
    obj = load_pickle_checkpoint(path)
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return list(_flat_keys(obj)) if isinstance(obj, Mapping) else []


def detect_kind(path: Path) -> Kind:
    """What a control file is, from its key names; an unreadable file counts as a
    ControlNet (its loader then says what is wrong with it when a unit uses it)."""
    try:
        keys = header_keys(path)
    except (ModelLoadError, OSError, ValueError):
        return "controlnet"
    if is_ip_adapter(keys):
        return "ip_adapter"
    if is_t2i_adapter(keys):
        return "t2i_adapter"
    return "controlnet"


class KindCache:
    """File kinds by (path, mtime, size): headers are read once per version of a file."""

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[tuple[int, int], Kind]] = {}
        self._lock = threading.Lock()

    def kind(self, path: Path) -> Kind:
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            known = self._kinds.get(str(path))
        if known is not None and known[0] == version:
            return known[1]
        kind = detect_kind(path)
        with self._lock:
            self._kinds[str(path)] = (version, kind)
        return kind


Folders = Path | Sequence[Path] | None


def _folders(folder: Folders) -> list[Path]:
    if folder is None:
        return []
    return [folder] if isinstance(folder, Path) else list(folder)


def list_models(folder: Folders, kinds: KindCache | None = None) -> list[ModelEntry]:
    """Control model files in `folder` (one, or several in order: `Paths.controlnet_dirs`;
    recursive, sorted by name), annotators excluded; `kinds` (a cache to reuse) tells each
    file's kind. A name found in two folders is the first folder's."""
    kinds = kinds if kinds is not None else KindCache()
    files: list[Path] = []
    for one in _folders(folder):  # walk_files: a missing folder has no files
        files += walk_files(one, SUFFIXES, skip_folders=(ANNOTATORS,))  # links: one rule
    files.sort(key=lambda p: p.stem.lower())  # stable: the first folder's file first
    return [ModelEntry(f"{p.stem} [{legacy_model_hash(p)}]", p, kinds.kind(p)) for p in files]


def find_model(folder: Folders, name: str, kinds: KindCache | None = None) -> ModelEntry:
    """The entry named `name` ("stem [hash]" or "stem"); KeyError naming what exists."""
    entries = list_models(folder, kinds)
    wanted = name.strip()
    stem = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
    for entry in entries:
        if entry.name == wanted:
            return entry
    for entry in entries:
        if entry.stem == stem:
            return entry
    known = ", ".join(e.name for e in entries) or "none"
    where = (" or ".join(one.name for one in _folders(folder) if one.is_dir())
             or "no ControlNet folder")
    raise KeyError(f"ControlNet model {name!r} not found in {where} (available: {known})")


def _load_clip_vision(path: Path, *, base: UNetConfig, device: torch.device,
                      dtype: torch.dtype):
    return load_clip_vision(path, device=device, dtype=dtype)  # any base model


LOADERS: dict[str, Callable[..., Any]] = {
    "controlnet": load_controlnet, "t2i_adapter": load_t2i_adapter,
    "ip_adapter": load_ip_adapter, "clip_vision": _load_clip_vision,
}


class ControlNetCache:
    """A small LRU of loaded control models of every kind (`LOADERS`); thread-safe."""

    def __init__(self, *, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.kinds = KindCache()  # file kinds for this owner's listings

    def get(self, path: Path, *, base: UNetConfig, device: torch.device,
            dtype: torch.dtype, kind: str = "controlnet") -> Any:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, kind, base, str(device), dtype)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model = LOADERS[kind](path, base=base, device=device, dtype=dtype)
        with self._lock:
            self._items[key] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model
