"""Textual-inversion files: reading every known layout, fitting them to a model.

Textual inversion (Gal et al., 2022, https://arxiv.org/abs/2208.01618) learns a few
token vectors for a new word. Layouts read here (docs/model-formats.md, "Textual inversion files"):

* A1111 `.pt`: `string_to_param` with exactly one entry, tensor (n, C), plus `name`,
  `step`, `sd_checkpoint`, `sd_checkpoint_name`;
* kohya `.safetensors`: `emb_params` (n, C), or SDXL `clip_l` (n, 768) + `clip_g` (n, 1280);
* diffusers `.bin` / `.safetensors`: a single `{token: (C,) or (n, C)}`.

The trigger word is the file stem. An embedding fits a model when its widths are
those of the model's text encoders (768 SD1, 1024 SD2, 768 + 1280 SDXL); others are
listed as `skipped` with the reason, never an error. The conditioner gets the fitting
ones as an `EmbeddingTable` per request (modules/conditioning/embeddings.py).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from modules.conditioning.embeddings import EmbeddingTable
from modules.models.hashes import ADDNET_SHORT, HashCache
from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.models.safetensors_io import load_safetensors
from modules.networks.files import file_stamp
from modules.networks.library import walk_files
from modules.paths import EMBEDDING_SUFFIXES

SINGLE = "*"  # vectors not tied to a named encoder (SD1 / SD2 files)


@dataclass(frozen=True)
class EmbeddingFile:
    """One embedding file: vectors by encoder name (or SINGLE) and A1111's fields."""

    name: str
    path: Path
    vectors: dict[str, Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def shape(self) -> int:
        """The vector width A1111 reports (SDXL: 768 + 1280 = 2048)."""
        return sum(v.shape[-1] for v in self.vectors.values())

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def describe(self) -> dict:
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.shape,
                "vectors": self.count}


def _as_rows(tensor: Tensor) -> Tensor:
    tensor = tensor.detach().float()
    return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor


def _vectors(data: dict) -> dict[str, Tensor]:
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if len(params) != 1:
            raise ValueError(f"string_to_param holds {len(params)} entries; exactly one is allowed")
        return {SINGLE: _as_rows(next(iter(params.values())))}
    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": _as_rows(data["clip_l"]), "clip_g": _as_rows(data["clip_g"])}
    if "emb_params" in data:
        return {SINGLE: _as_rows(data["emb_params"])}
    tensors = [v for v in data.values() if isinstance(v, Tensor)]
    if len(data) == 1 and len(tensors) == 1:  # diffusers {token: tensor}
        return {SINGLE: _as_rows(tensors[0])}
    raise ValueError("not a textual-inversion file (keys: " + ", ".join(map(str, data)) + ")")


def read_embedding(path: Path) -> EmbeddingFile:
    """Read one file; raises ValueError / ModelLoadError when it is not an embedding."""
    if path.suffix.lower() == ".safetensors":
        data: dict = load_safetensors(path)
    else:
        data = load_pickle_checkpoint(os.fspath(path), mmap=False)
        if not isinstance(data, dict):
            raise ValueError("not a dict")
    vectors = _vectors(data)
    if (len({v.shape[0] for v in vectors.values()}) != 1
            or any(v.ndim != 2 for v in vectors.values())):
        raise ValueError("vectors of different counts or ranks")
    step = data.get("step")
    return EmbeddingFile(
        name=path.stem, path=path, vectors=vectors,
        step=int(step) if isinstance(step, (int, float)) else None,
        sd_checkpoint=_text(data.get("sd_checkpoint")),
        sd_checkpoint_name=_text(data.get("sd_checkpoint_name")))


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def fit(embedding: EmbeddingFile, widths: dict[str, int]) -> dict[str, Tensor] | str:
    """Vectors per encoder of a model with encoder `widths`, or the reason it does not fit."""
    if SINGLE in embedding.vectors:
        width = embedding.vectors[SINGLE].shape[-1]
        if len(widths) == 1 and width == next(iter(widths.values())):
            return {next(iter(widths)): embedding.vectors[SINGLE]}
    elif set(embedding.vectors) == set(widths) and all(
            embedding.vectors[n].shape[-1] == w for n, w in widths.items()):
        return dict(embedding.vectors)
    return (f"vector width {embedding.shape} does not fit this model "
            f"(expects {sum(widths.values())})")


@dataclass
class ModelEmbeddings:
    """The embeddings one model can use, and those it cannot, with reasons."""

    table: EmbeddingTable
    loaded: dict[str, EmbeddingFile] = field(default_factory=dict)
    skipped: dict[str, tuple[EmbeddingFile | None, str]] = field(default_factory=dict)


class EmbeddingLibrary:
    """Reads the embeddings folder; caches files by stamp and tables per model."""

    def __init__(self, *, folder: Path, hash_cache: HashCache) -> None:
        self.folder = folder
        self.hash_cache = hash_cache
        self._lock = threading.Lock()
        self._files: dict[tuple, EmbeddingFile | str] = {}
        self._tables: OrderedDict[tuple, ModelEmbeddings] = OrderedDict()

    def refresh(self) -> None:
        with self._lock:
            self._files.clear()
            self._tables.clear()

    def scan(self) -> list[tuple[Path, tuple, EmbeddingFile | str]]:
        """(path, stamp, file or error) for every candidate file; unchanged files are not reread."""
        found = []
        for path in walk_files(self.folder, EMBEDDING_SUFFIXES):
            if path.stat().st_size == 0:
                continue
            stamp = file_stamp(path)
            with self._lock:
                entry = self._files.get(stamp)
            if entry is None:
                try:
                    entry = read_embedding(path)
                except Exception as error:  # a damaged user file is skipped, never fatal
                    entry = f"cannot read {path.name}: {error}"
                with self._lock:
                    self._files[stamp] = entry
            found.append((path, stamp, entry))
        return found

    def for_model(self, widths: dict[str, int], tokenize) -> ModelEmbeddings:
        """The table for a model whose encoders have `widths`; reused while nothing changed."""
        scanned = self.scan()
        key = (tuple(widths.items()), tuple(stamp for _, stamp, _ in scanned))
        with self._lock:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
        result = ModelEmbeddings(table=EmbeddingTable())
        usable: dict[str, dict[str, Tensor]] = {}
        for path, _, entry in scanned:
            if isinstance(entry, str):
                result.skipped[path.stem] = (None, entry)
                continue
            fitted = fit(entry, widths)
            if isinstance(fitted, str):
                result.skipped[entry.name] = (entry, fitted)
            elif entry.name not in usable:
                usable[entry.name] = fitted
                result.loaded[entry.name] = entry
        result.table = EmbeddingTable.from_vectors(tokenize, usable)
        with self._lock:
            self._tables[key] = result
            while len(self._tables) > 4:
                self._tables.popitem(last=False)
        return result

    def shorthash(self, embedding: EmbeddingFile) -> str:
        return self.hash_cache.sha256(embedding.path)[:ADDNET_SHORT]


def used_embeddings(table: EmbeddingTable, tokenize, texts: list[str],
                    encoder_name: str) -> list[str]:
    """Names of the embeddings that occur in `texts`, in order of first use."""
    used: list[str] = []
    for text in texts:
        ids = tokenize(text)
        position = 0
        while position < len(ids):
            match = table.match(ids, position, encoder_name)
            if match is None:
                position += 1
                continue
            if match.name not in used:
                used.append(match.name)
            position += len(match.token_ids)
    return used

