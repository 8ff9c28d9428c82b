"""ControlNet model files under `models/ControlNet/` (or `--controlnet-dir`), and a cache.

Names follow the ControlNet extension: `"<file stem> [<hash8>]"`, the hash being
A1111's legacy 8-hex model hash, so API clients can send back what `model_list` gave
them; a bare stem (no hash) is accepted too. `annotators/` holds preprocessor weights,
not ControlNets, and is skipped.

`ControlNetCache` keeps the last few loaded ControlNets (per file, mtime, base model
shape, device and dtype) on the script instance that owns it: one per Runtime, no
module globals. Loading goes through `modules.models.controlnet_files.load_controlnet`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.models.controlnet_files import load_controlnet
from modules.models.folders import walk_files
from modules.models.hashes import legacy_model_hash
from modules.nn.configs import UNetConfig
from modules.nn.controlnet import ControlNet

SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")
ANNOTATORS = "annotators"


@dataclass(frozen=True)
class ModelEntry:
    name: str  # "stem [hash8]"
    path: Path

    @property
    def stem(self) -> str:
        return self.path.stem


def list_models(folder: Path | None) -> list[ModelEntry]:
    """ControlNet files in `folder` (recursive, sorted by name), annotators excluded."""
    if folder is None:
        return []
    files = walk_files(folder, SUFFIXES, skip_folders=(ANNOTATORS,))  # links: one rule
    files.sort(key=lambda p: p.stem.lower())
    return [ModelEntry(f"{p.stem} [{legacy_model_hash(p)}]", p) for p in files]


def find_model(folder: Path | None, name: str) -> ModelEntry:
    """The entry named `name` ("stem [hash]" or "stem"); KeyError naming what exists."""
    entries = list_models(folder)
    wanted = name.strip()
    stem = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
    for entry in entries:
        if entry.name == wanted:
            return entry
    for entry in entries:
        if entry.stem == stem:
            return entry
    known = ", ".join(e.name for e in entries) or "none"
    where = folder.name if folder is not None else "no ControlNet folder"
    raise KeyError(f"ControlNet model {name!r} not found in {where} (available: {known})")


class ControlNetCache:
    """A small LRU of loaded ControlNets; thread-safe."""

    def __init__(self, *, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[tuple, ControlNet] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, *, base: UNetConfig, device: torch.device,
            dtype: torch.dtype) -> ControlNet:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, base, str(device), dtype)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model = load_controlnet(path, base=base, device=device, dtype=dtype)
        with self._lock:
            self._items[key] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model
