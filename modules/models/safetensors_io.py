"""Reading `.safetensors` files: a strictly validated header, then tensors one at a time.

A `.safetensors` file is an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`)
and the raw tensor data, offsets relative to the end of the header.

Why our own reader instead of `safetensors.safe_open`: detection and hashing need the
header without touching tensor data, and a damaged or "lying" header (offsets past the
end of the file, overlapping tensors, a shape that does not fit its byte span) must
become one clear error naming the file and the reason before anything is allocated.
Tensors are then read with plain file reads, one at a time, and converted straight to
the target dtype and device, so peak memory stays near one copy of the result (an
mmap would add the mapped source pages to the resident set).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import torch

from modules.models.errors import ModelLoadError

# safetensors' own limit; a header larger than this is certainly not a real one.
MAX_HEADER_BYTES = 100_000_000

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


class SafetensorsError(ModelLoadError):
    """A `.safetensors` file that cannot be trusted; the message names file and reason."""


@dataclass(frozen=True)
class TensorInfo:
    """What a header says about one tensor: its shape and safetensors dtype name ("F16")."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize

    @staticmethod
    def of(tensor: torch.Tensor) -> "TensorInfo":
        return TensorInfo(shape=tuple(tensor.shape), dtype=DTYPE_NAMES[tensor.dtype])


@dataclass(frozen=True)
class TensorSpan:
    """A tensor's header entry with its byte span in the data section."""

    info: TensorInfo
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, validated header of one file."""

    path: str
    data_start: int  # absolute file offset of the data section (8 + header length)
    spans: dict[str, TensorSpan]
    metadata: dict[str, object]

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return {name: span.info for name, span in self.spans.items()}


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate only the header of `path` (8 + N bytes, no tensor data)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as stream:
            return parse_safetensors_header(stream, file_size=size, path=os.fspath(path))
    except OSError as error:
        raise SafetensorsError(path, f"cannot read file ({error.strerror or error})") from error


def parse_safetensors_header(stream: BinaryIO, *, file_size: int, path: str) -> SafetensorsHeader:
    """Parse the header from an open stream positioned at 0; reads exactly 8 + N bytes."""
    if file_size == 0:
        raise SafetensorsError(path, "empty file")
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise SafetensorsError(path, f"truncated: {file_size} bytes is too short for a header")
    header_len = int.from_bytes(prefix, "little")
    if header_len < 2 or header_len > MAX_HEADER_BYTES:
        raise SafetensorsError(path, f"not a safetensors file (header length {header_len})")
    if 8 + header_len > file_size:
        raise SafetensorsError(
            path, f"truncated: header of {header_len} bytes but the file has {file_size} bytes"
        )
    raw = stream.read(header_len)
    if len(raw) < header_len:
        raise SafetensorsError(path, "truncated while reading the header")
    header = _decode_json(raw, path)
    metadata = _decode_metadata(header.pop("__metadata__", None), path)
    spans = {name: _parse_entry(name, entry, path) for name, entry in header.items()}
    _check_layout(spans, data_size=file_size - 8 - header_len, path=path)
    return SafetensorsHeader(path=path, data_start=8 + header_len, spans=spans, metadata=metadata)


def _decode_json(raw: bytes, path: str) -> dict:
    if not raw.lstrip()[:1] == b"{":
        raise SafetensorsError(path, "not a safetensors file (header is not a JSON object)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SafetensorsError(path, f"corrupt header JSON ({error})") from error
    if not isinstance(header, dict):
        raise SafetensorsError(path, "corrupt header (not a JSON object)")
    return header


def _decode_metadata(raw: object, path: str) -> dict[str, object]:
    """`__metadata__` is str -> str; values that look like JSON objects are decoded (A1111)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SafetensorsError(path, "corrupt header (__metadata__ is not an object)")
    metadata: dict[str, object] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # kohya writes some free text starting with "{"; keep it as text
        metadata[str(key)] = value
    return metadata


def _parse_entry(name: str, entry: object, path: str) -> TensorSpan:
    if not isinstance(entry, dict):
        raise SafetensorsError(path, f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise SafetensorsError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_size(s) for s in shape):
        raise SafetensorsError(path, f"tensor {name!r}: invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(o) for o in offsets)):
        raise SafetensorsError(path, f"tensor {name!r}: invalid data_offsets {offsets!r}")
    info = TensorInfo(shape=tuple(shape), dtype=dtype)
    begin, end = offsets
    if end < begin or end - begin != info.nbytes:
        raise SafetensorsError(
            path,
            f"lying header: tensor {name!r} {dtype}{list(shape)} needs {info.nbytes} bytes "
            f"but its data_offsets span {end - begin}",
        )
    return TensorSpan(info=info, begin=begin, end=end)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(spans: dict[str, TensorSpan], *, data_size: int, path: str) -> None:
    """Tensors must tile the data section exactly: no gaps, overlaps or bytes past the end."""
    position = 0
    for name, span in sorted(spans.items(), key=lambda item: (item[1].begin, item[1].end)):
        if span.begin != position:
            problem = "overlaps the previous tensor" if span.begin < position else "leaves a gap"
            raise SafetensorsError(path, f"lying header: tensor {name!r} {problem}")
        position = span.end
    if position > data_size:
        raise SafetensorsError(
            path, f"truncated: header needs {position} data bytes but the file holds {data_size}"
        )
    if position < data_size:
        raise SafetensorsError(
            path, f"lying header: {data_size - position} bytes after the last tensor"
        )


def load_safetensors(
    path: str | os.PathLike[str],
    *,
    keys: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    header: SafetensorsHeader | None = None,
) -> dict[str, torch.Tensor]:
    """Load the selected tensors (all by default), converting each as it is read."""
    return dict(iter_safetensors(path, keys=keys, dtype=dtype, device=device, header=header))


def iter_safetensors(
    path: str | os.PathLike[str],
    *,
    keys: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    header: SafetensorsHeader | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` one at a time; floating tensors are cast to `dtype` if given."""
    header = header or read_safetensors_header(path)
    names = list(header.spans) if keys is None else list(keys)
    missing = [name for name in names if name not in header.spans]
    if missing:
        raise SafetensorsError(path, f"no tensor named {missing[0]!r}")
    if sys.byteorder != "little":
        raise SafetensorsError(path, "big-endian hosts are not supported")
    # Plain reads into freshly allocated tensors, not an mmap: mapped pages count as
    # resident memory, so an mmap plus the loaded copy would double the peak.
    with open(path, "rb") as stream:
        for name in names:
            yield name, _read_tensor(stream, header, name, dtype=dtype, device=device)


def _read_tensor(
    stream,
    header: SafetensorsHeader,
    name: str,
    *,
    dtype: torch.dtype | None,
    device: str | torch.device,
) -> torch.Tensor:
    span = header.spans[name]
    source_dtype = span.info.torch_dtype
    target = dtype if dtype is not None and source_dtype.is_floating_point else source_dtype
    if span.info.numel == 0:
        return torch.empty(span.info.shape, dtype=target, device=device)
    raw = torch.empty(span.info.nbytes, dtype=torch.uint8)
    stream.seek(header.data_start + span.begin)
    if stream.readinto(memoryview(raw.numpy())) != span.info.nbytes:
        raise SafetensorsError(header.path, f"truncated while reading {name!r}")
    tensor = raw.view(source_dtype).view(span.info.shape)
    # One tensor at a time: the cast (or device move) is the only extra copy alive.
    return tensor.to(device=device, dtype=target)
