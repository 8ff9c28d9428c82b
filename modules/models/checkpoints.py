"""The checkpoint registry: what is in the model folders and how users name it.

A `CheckpointInfo` carries A1111's names for one checkpoint: `name` (path relative to
its folder, "/"-separated), `model_name` (that without extension, "/" -> "_"),
`stem`, the legacy 8-hex hash, and once hashed the sha256 and the title
`name [short]`. `find_checkpoint` resolves what a user, an API call or an old infotext
says (docs/a1111-semantics.md, "Hashes and checkpoint lookup"): exact alias first, then the shortest
title containing the query, then the same with a trailing `[...]` removed.

Queries are only ever compared with the names of listed files; no path is built from
them, and queries that look like paths escaping the folders (absolute, `..`) are
refused outright. Links in the folders are followed by the one rule of
`modules.models.folders` (A1111 follows them too; people link drives), never looping.

Diffusers folders are listed as checkpoints too; their hashes are those of the U-Net
weights file, the part that identifies a fine-tune.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from modules.models.diffusers_folder import MODEL_INDEX, component_weight_files
from modules.models.errors import ModelLoadError
from modules.models.folders import walk_folders
from modules.models.hashes import CHECKPOINT_SHORT, HashCache, legacy_model_hash, sha256_file

# `.gguf`: quantized SD3 / Flux diffusion models (flow_loader.py), listed as Forge does;
# `.sft`: Flux's other name for safetensors (read by content, `single_file.file_format`).
CHECKPOINT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".gguf")
VAE_MARKERS = (".vae.ckpt", ".vae.safetensors", ".vae.pt")
TRAILING_HASH = re.compile(r"\s*\[[^]]+]\s*$")


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    """One checkpoint file or diffusers folder and its A1111 names."""

    path: str  # absolute
    name: str  # relative to its models folder, "/"-separated
    legacy_hash: str
    sha256: str | None = None

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name)[0].replace("/", "_")

    @property
    def stem(self) -> str:
        return os.path.splitext(PurePosixPath(self.name).name)[0]

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:CHECKPOINT_SHORT] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def hash_target(self) -> str:
        """The file whose bytes are hashed (a diffusers folder's U-Net weights)."""
        return hash_target(self.path)

    @property
    def aliases(self) -> list[str]:
        """Every exact name this checkpoint answers to, in A1111's order."""
        names = [self.legacy_hash, self.model_name, self.title, self.name, self.stem,
                 f"{self.name} [{self.legacy_hash}]"]
        if self.shorthash:
            names += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]",
                      f"{self.stem} [{self.shorthash}]"]
        return names

    def hashed(self, cache: HashCache | None = None) -> "CheckpointInfo":
        """A copy with `sha256` set (computed, or from the cache)."""
        if self.sha256:
            return self
        target = self.hash_target
        value = cache.sha256(target) if cache is not None else sha256_file(target)
        return replace(self, sha256=value)


def hash_target(path: str | os.PathLike[str]) -> str:
    """The file that stands for `path` in hashes: the path itself for a file; for a
    diffusers folder its U-Net (or SD3 / Flux transformer) weights (the first shard when
    sharded), else its `model_index.json`; for a bare component folder (a VAE) its own
    weights file."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    folder = Path(path)
    if (folder / MODEL_INDEX).is_file():
        for denoiser in ("unet", "transformer"):  # SD1/SD2/SDXL; SD3 / Flux
            try:
                return os.fspath(component_weight_files(folder, denoiser)[0])
            except ModelLoadError:
                continue
        return os.fspath(folder / MODEL_INDEX)
    try:
        return os.fspath(component_weight_files(folder.parent, folder.name)[0])
    except ModelLoadError:
        return os.fspath(folder / "config.json")


def list_checkpoints(dirs: Iterable[str | os.PathLike[str]], *,
                     cache: HashCache | None = None) -> list[CheckpointInfo]:
    """All checkpoints under `dirs` (recursive), sorted like A1111's dropdown."""
    found: dict[str, CheckpointInfo] = {}
    for root in dirs:
        root = os.path.abspath(os.fspath(root))
        for path in _walk(root):
            if path in found:
                continue
            info = CheckpointInfo(path=path, name=_relative_name(path, root), legacy_hash="")
            info = replace(info, legacy_hash=legacy_model_hash(info.hash_target))
            if cache is not None:
                info = replace(info, sha256=cache.cached(info.hash_target, "sha256"))
            found[path] = info
    return sorted(found.values(), key=lambda info: natural_key(info.name))


def _walk(root: str) -> list[str]:
    results: list[str] = []
    for directory, subdirs, files in walk_folders(root):
        if MODEL_INDEX in files and directory != root:
            results.append(directory)
            subdirs[:] = []
            continue
        for file in files:
            lowered = file.lower()
            if lowered.endswith(CHECKPOINT_SUFFIXES) and not lowered.endswith(VAE_MARKERS):
                results.append(os.path.join(directory, file))
    return results


def _relative_name(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def natural_key(text: str) -> list[object]:
    """A1111's alphanumeric sort: digit runs compare as numbers, the rest case-blind."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"([0-9]+)", text)]


def is_safe_query(query: str) -> bool:
    """False for queries that name a path outside the folders (absolute or with `..`)."""
    if not query or "\x00" in query:
        return False
    for flavour in (PurePosixPath(query), PureWindowsPath(query)):
        if flavour.is_absolute() or flavour.drive or ".." in flavour.parts:
            return False
    return True


def find_checkpoint(query: str, checkpoints: Sequence[CheckpointInfo]) -> CheckpointInfo | None:
    """Resolve a user's checkpoint name in A1111's order (see the module docstring)."""
    query = query.strip()
    if not is_safe_query(query):
        return None
    for info in checkpoints:
        if query in info.aliases:
            return info
    found = _shortest_title_containing(query, checkpoints)
    if found is None:
        stripped = TRAILING_HASH.sub("", query)
        found = _shortest_title_containing(stripped, checkpoints) if stripped != query else None
    return found


def _shortest_title_containing(query: str,
                               checkpoints: Sequence[CheckpointInfo]) -> CheckpointInfo | None:
    matches = [info for info in checkpoints if query in info.title]
    return min(matches, key=lambda info: len(info.title)) if matches else None
