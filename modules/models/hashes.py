"""The hashes the A1111 ecosystem prints in infotexts and uses as model ids.

* `sha256_file`: the whole file in 1 MiB blocks; the short form is the first 10 hex
  digits (checkpoints, VAEs) or 12 (LoRA, embeddings).
* `legacy_model_hash`: the old "Model hash": sha256 of the 64 KiB at offset 1 MiB,
  first 8 hex digits, "NOFILE" when the file is missing. Old infotexts still use it.
* `addnet_hash`: kohya's LoRA hash, sha256 of a `.safetensors` file's data section only
  (after the 8-byte length and the JSON header), so editing metadata keeps it; the
  metadata's `sshs_model_hash` wins when present; other formats use the full sha256.

`HashCache` persists results as JSON keyed by absolute path and hash kind, valid
while the file's mtime and size are unchanged (A1111 keys by display name and
compares mtime only, which returns stale hashes after a swap; we do not).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from modules.models.safetensors_io import read_safetensors_header

BLOCK_SIZE = 1 << 20
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
CHECKPOINT_SHORT = 10
ADDNET_SHORT = 12


def _sha256_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(BLOCK_SIZE), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Full-file sha256, hex."""
    with open(path, "rb") as stream:
        return _sha256_stream(stream)


def legacy_model_hash(path: str | os.PathLike[str]) -> str:
    """A1111's old model hash: 8 hex digits of sha256(file[1 MiB : 1 MiB + 64 KiB])."""
    try:
        with open(path, "rb") as stream:
            stream.seek(LEGACY_OFFSET)
            return hashlib.sha256(stream.read(LEGACY_LENGTH)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


def addnet_hash(path: str | os.PathLike[str]) -> str:
    """kohya "addnet" hash (full hex); see the module docstring."""
    path = os.fspath(path)
    if not path.lower().endswith(".safetensors"):
        return sha256_file(path)
    header = read_safetensors_header(path)
    declared = header.metadata.get("sshs_model_hash")
    if isinstance(declared, str) and declared:
        return declared
    with open(path, "rb") as stream:
        stream.seek(header.data_start)
        return _sha256_stream(stream)


def short_hash(full: str | None, length: int = CHECKPOINT_SHORT) -> str | None:
    return full[:length] if full else None


class HashCache:
    """Hashes by (absolute path, kind), persisted atomically to one JSON file.

    An entry is reused only while the file's mtime and size match; each file is hashed
    at most once per change, even with several threads asking.
    """

    def __init__(self, *, path: str | os.PathLike[str] | None) -> None:
        self._path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, dict]] = self._read()

    def get(self, file: str | os.PathLike[str], kind: str, compute: Callable[[str], str]) -> str:
        """The cached value for `file`, or `compute(file)` stored and saved."""
        key, stamp = _identity(file)
        with self._lock:  # held while computing: a second caller waits, never re-hashes
            cached = self._lookup(key, kind, stamp)
            if cached is not None:
                return cached
            value = compute(key)
            self._entries.setdefault(kind, {})[key] = {**stamp, "value": value}
            self._save()
            return value

    def cached(self, file: str | os.PathLike[str], kind: str) -> str | None:
        """The value if already known and still valid; never computes."""
        try:
            key, stamp = _identity(file)
        except OSError:
            return None
        with self._lock:
            return self._lookup(key, kind, stamp)

    def sha256(self, file: str | os.PathLike[str]) -> str:
        return self.get(file, "sha256", sha256_file)

    def addnet(self, file: str | os.PathLike[str]) -> str:
        return self.get(file, "addnet", addnet_hash)

    def _lookup(self, key: str, kind: str, stamp: dict) -> str | None:
        entry = self._entries.get(kind, {}).get(key)
        if entry and entry.get("mtime") == stamp["mtime"] and entry.get("size") == stamp["size"]:
            return entry.get("value")
        return None

    def _read(self) -> dict[str, dict[str, dict]]:
        if self._path is None or not self._path.is_file():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a damaged cache only costs re-hashing
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        """Write a temp file beside the cache, then `os.replace`: never a half-written cache."""
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self._path.parent, prefix=self._path.name,
                                        suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self._entries, stream, indent=1, sort_keys=True)
            os.replace(temp, self._path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _identity(file: str | os.PathLike[str]) -> tuple[str, dict]:
    key = os.path.abspath(os.fspath(file))
    stat = os.stat(key)
    return key, {"mtime": stat.st_mtime_ns, "size": stat.st_size}
