"""The LoRA files a user has: listing, name / alias lookup, hashes, cached reads.

As in A1111 (docs/a1111-semantics.md, "Network libraries"): every `.safetensors` / `.pt` / `.ckpt`
under the LoRA folder is a network named by its file stem; its alias is the `ss_output_name`
metadata. A prompt names a network by stem or alias; an alias two files share is
ambiguous and only their stems work. Names are only ever looked up in this listing,
never joined into a path, so a prompt cannot reach a file outside the folder.

The short hash in infotexts is kohya's "addnet" hash, 12 hex digits (models/hashes.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from modules.models.folders import walk_files as model_files
from modules.models.hashes import ADDNET_SHORT, HashCache
from modules.models.safetensors_io import read_safetensors_header
from modules.networks.files import NetworkTensors, file_stamp, load_network_file
from modules.paths import NETWORK_SUFFIXES


@dataclass(frozen=True)
class NetworkOnDisk:
    """One LoRA file as the listing knows it (header only)."""

    name: str
    alias: str
    path: Path
    metadata: dict

    @property
    def sd_version(self) -> str:
        """"SDXL", "SD2", "SD1" or "Unknown", from kohya metadata as A1111 guesses it."""
        base = str(self.metadata.get("ss_base_model_version", ""))
        if base.startswith("sdxl_"):
            return "SDXL"
        if str(self.metadata.get("ss_v2", "")) == "True":
            return "SD2"
        return "SD1" if self.metadata else "Unknown"


def _metadata(path: Path) -> dict:
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        return dict(read_safetensors_header(path).metadata)
    except Exception:  # a damaged file is still listed; reading it later reports why
        return {}


def walk_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `folder`, links followed by the rule of `modules.models.folders`."""
    return model_files(folder, suffixes)


class LoraLibrary:
    """Lists and reads LoRA files; thread-safe; one per runtime."""

    def __init__(self, *, folder: Path, hash_cache: HashCache, cache_size: int = 4) -> None:
        self.folder = folder
        self.hash_cache = hash_cache
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._listing: list[NetworkOnDisk] | None = None
        self._files: OrderedDict[tuple, NetworkTensors] = OrderedDict()

    def list(self) -> list[NetworkOnDisk]:
        with self._lock:
            if self._listing is None:
                self._listing = [
                    NetworkOnDisk(name=path.stem, path=path, metadata=meta,
                                  alias=str(meta.get("ss_output_name") or path.stem))
                    for path in walk_files(self.folder, NETWORK_SUFFIXES)
                    for meta in (_metadata(path),)
                ]
            return list(self._listing)

    def refresh(self) -> None:
        with self._lock:
            self._listing = None

    def find(self, name: str) -> NetworkOnDisk | None:
        """By file stem first, then by an alias only one file has."""
        listing = self.list()
        for entry in listing:
            if entry.name == name:
                return entry
        by_alias = [entry for entry in listing if entry.alias == name]
        return by_alias[0] if len(by_alias) == 1 else None

    def shorthash(self, entry: NetworkOnDisk) -> str:
        return self.hash_cache.addnet(entry.path)[:ADDNET_SHORT]

    def read(self, entry: NetworkOnDisk) -> tuple[tuple, NetworkTensors]:
        """(file stamp, grouped tensors), from the cache while the file is unchanged."""
        stamp = file_stamp(entry.path)
        with self._lock:
            if stamp in self._files:
                self._files.move_to_end(stamp)
                return stamp, self._files[stamp]
        tensors = load_network_file(entry.path)
        with self._lock:
            self._files[stamp] = tensors
            while len(self._files) > max(self.cache_size, 1):
                self._files.popitem(last=False)
        return stamp, tensors
