"""Reading `.gguf` files: GGML-quantized diffusion models (city96's Flux / SD3.5 files).

A GGUF file is a header (magic `GGUF`, version, key-value metadata such as
`general.architecture`, then name / GGML shape / type / offset of every tensor) followed
by the aligned tensor data. The `gguf` package's `GGUFReader` parses and validates the
header over a memory map; a truncated or garbage file fails there and becomes one
`GGUFError` naming the file. The tensor data is then read with plain file reads, one
tensor at a time, into torch memory (touching the map would add the file's pages to the
resident set on top of the copies, see `safetensors_io`), so peak memory stays near the
file size.

Quantized tensors come back as `QuantizedTensor` (block bytes + type + shape, dequantized
per layer at compute time by `modules.nn.lowbit`); F32 / F16 / BF16 ones as tensors of
that dtype. Shapes are PyTorch's (GGML lists dimensions innermost first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from gguf import GGMLQuantizationType, GGUFReader

from modules.models.errors import ModelLoadError
from modules.nn.gguf_quants import SUPPORTED_TYPES, QuantizedTensor

ARCHITECTURE_KEY = "general.architecture"
DENSE_TYPES: dict[GGMLQuantizationType, torch.dtype] = {
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}


class GGUFError(ModelLoadError):
    """A `.gguf` file that cannot be read; the message names file and reason."""


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF header: PyTorch shape, GGML type, absolute data offset, size."""

    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    offset: int
    nbytes: int

    @property
    def is_quantized(self) -> bool:
        return self.qtype not in DENSE_TYPES


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's tensors (by name) and its metadata, without tensor data."""

    path: str
    tensors: dict[str, GGUFTensorInfo]
    metadata: dict[str, object]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> PyTorch shape, for detecting the family from the header."""
        return {name: info.shape for name, info in self.tensors.items()}

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get(ARCHITECTURE_KEY)
        return value if isinstance(value, str) else None


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """True for a `.gguf` file name (the content is checked when it is read)."""
    return os.fspath(path).lower().endswith(".gguf")


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Names, shapes, types and metadata; `GGUFError` for a missing, truncated or bad file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GGUFError(path, "not a file" if os.path.exists(path) else "file not found")
    if os.path.getsize(path) == 0:
        raise GGUFError(path, "empty file")
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OSError, EOFError) as error:
        raise GGUFError(path, f"not a readable GGUF file (truncated or damaged: {error})") \
            from error
    tensors = {}
    for tensor in reader.tensors:
        qtype = GGMLQuantizationType(tensor.tensor_type)
        if qtype not in DENSE_TYPES and qtype not in SUPPORTED_TYPES:
            raise GGUFError(path, f"tensor {tensor.name!r}: unsupported type {qtype.name} "
                                  f"(supported: F32, F16, BF16, "
                                  f"{', '.join(t.name for t in SUPPORTED_TYPES)})")
        shape = tuple(int(size) for size in reversed(tensor.shape.tolist()))
        tensors[tensor.name] = GGUFTensorInfo(shape=shape, qtype=qtype,
                                              offset=int(tensor.data_offset),
                                              nbytes=int(tensor.n_bytes))
    metadata = {name: _field_value(field) for name, field in reader.fields.items()
                if not name.startswith("GGUF.")}
    return GGUFHeader(path=path, tensors=tensors, metadata=metadata)


def _field_value(field) -> object:  # noqa: ANN001 - gguf's ReaderField
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError):
        return None


def read_gguf(path: str | os.PathLike[str], *, keys: list[str] | None = None,
              device: str | torch.device = "cpu") -> dict[str, torch.Tensor | QuantizedTensor]:
    """Every tensor (or `keys`): `QuantizedTensor` for GGML quantizations, else a tensor."""
    return dict(iter_gguf(path, keys=keys, device=device))


def iter_gguf(path: str | os.PathLike[str], *, keys: list[str] | None = None,
              device: str | torch.device = "cpu", header: GGUFHeader | None = None,
              ) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
    """Yield `(name, tensor)` one at a time (so a caller converting each keeps one copy)."""
    header = header or read_gguf_header(path)
    names = list(header.tensors) if keys is None else keys
    missing = [name for name in names if name not in header.tensors]
    if missing:
        raise GGUFError(header.path, f"no tensor named {missing[0]!r}")
    with open(header.path, "rb") as stream:
        for name in names:
            yield name, _read_tensor(stream, header, name, device)


def _read_tensor(stream, header: GGUFHeader, name: str,  # noqa: ANN001 - a binary file
                 device: str | torch.device) -> torch.Tensor | QuantizedTensor:
    info = header.tensors[name]
    raw = torch.empty(info.nbytes, dtype=torch.uint8)
    stream.seek(info.offset)
    if stream.readinto(memoryview(raw.numpy())) != info.nbytes:
        raise GGUFError(header.path, f"truncated: tensor {name!r} ends past the end of the file")
    raw = raw.to(device)
    if info.qtype in DENSE_TYPES:
        return raw.view(DENSE_TYPES[info.qtype]).view(info.shape)
    return QuantizedTensor(data=raw, qtype=info.qtype, shape=info.shape)


def gguf_architecture(path: str | os.PathLike[str]) -> str | None:
    """The file's `general.architecture` ("flux", "sd3", ...), if it says."""
    return read_gguf_header(path).architecture
