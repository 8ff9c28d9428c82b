"""Writing `.safetensors` files one tensor at a time, atomically.

`safetensors.torch.save_file` wants every tensor in memory at once. A checkpoint merge
produces its tensors one by one, and all their shapes and dtypes are known before the
first is computed, so the header can be written first and each tensor's bytes appended
as it is made: peak memory is one tensor, not one model.

The file is written beside its destination under a temporary name, flushed to disk and
then renamed over the destination, so a crash or an error never leaves a half-written
checkpoint where the model list would find it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from modules.models.safetensors_io import DTYPE_NAMES, TensorInfo

HEADER_ALIGNMENT = 8  # safetensors pads the JSON header with spaces to a multiple of 8


def encode_header(entries: Sequence[tuple[str, TensorInfo]],
                  metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length and the padded JSON header for tensors laid out in `entries` order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, info in entries:
        header[name] = {"dtype": info.dtype, "shape": list(info.shape),
                        "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % HEADER_ALIGNMENT)
    return len(raw).to_bytes(8, "little") + raw


class SafetensorsWriter:
    """Write the tensors announced in `entries`, in that order, to `path` (atomic).

        with SafetensorsWriter(path, entries, metadata) as writer:
            for name, tensor in produce():
                writer.write(name, tensor)

    Each tensor must match its announced name, shape and dtype; leaving the block with
    tensors missing, or with an exception, deletes the temporary file.
    """

    def __init__(self, path: str | os.PathLike[str], entries: Sequence[tuple[str, TensorInfo]],
                 metadata: Mapping[str, str] | None = None) -> None:
        if sys.byteorder != "little":
            raise RuntimeError("safetensors files are little-endian; "
                               "big-endian hosts are not supported")
        self.path = Path(path)
        self.entries = list(entries)
        self.metadata = dict(metadata or {})
        self._temp = self.path.with_name(f".{self.path.name}.partial")
        self._next = 0
        self._stream = None

    def __enter__(self) -> "SafetensorsWriter":
        self._stream = open(self._temp, "wb")
        self._stream.write(encode_header(self.entries, self.metadata))
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.entries):
            raise ValueError(f"tensor {name!r} was not announced in the header")
        expected_name, info = self.entries[self._next]
        got = TensorInfo(shape=tuple(tensor.shape), dtype=DTYPE_NAMES[tensor.dtype])
        if name != expected_name or got != info:
            raise ValueError(f"expected {expected_name!r} {info.dtype}{list(info.shape)}, "
                             f"got {name!r} {got.dtype}{list(got.shape)}")
        if tensor.numel():
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            self._stream.write(memoryview(data.numpy()))
        self._next += 1

    def __exit__(self, kind, error, traceback) -> None:
        stream, self._stream = self._stream, None
        try:
            if error is None and self._next != len(self.entries):
                raise ValueError(f"only {self._next} of {len(self.entries)} tensors were written")
            if error is None:
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            stream.close()
            self._temp.unlink(missing_ok=True)
            raise
        stream.close()
        if error is not None:
            self._temp.unlink(missing_ok=True)
            return
        os.replace(self._temp, self.path)
