"""GGML block quantization, dequantized with torch: the weight formats of `.gguf` files.

GGUF files of diffusion models (city96's Flux / SD3.5 conversions) store each large weight
matrix row by row in fixed-size *blocks*: a block holds `block_size` weights as small
integers plus one or a few float16 scales. A layer keeps those bytes (2 to 8.5 bits a
weight instead of 16) and turns them back into a compute-dtype matrix only while it runs
(`modules.nn.lowbit`). The layouts below are GGML's (ggml-common.h); every function here
is checked against `gguf.quants.dequantize`, the package's numpy reference
(tests/test_gguf.py).

Blocks of 32 weights ("legacy" quants), scale `d` a float16 at the start of the block:
- Q8_0 (34 bytes): d, 32 int8 values; w = d * q.
- Q4_0 (18 bytes): d, 16 bytes of nibbles: byte j's low nibble is weight j, its high
  nibble weight j + 16; w = d * (q - 8).
- Q5_0 (22 bytes): d, 32 high bits (a little-endian uint32, bit j for weight j), then
  nibbles as Q4_0; q = nibble | high bit << 4; w = d * (q - 16).
- Q4_1 (20 bytes) / Q5_1 (24 bytes): as Q4_0 / Q5_0 with a float16 offset m after d and
  unsigned codes; w = d * q + m.

Super-blocks of 256 weights ("k-quants"), 8 or 16 sub-blocks with their own small scales:
- Q4_K (144 bytes): d, dmin (float16), 12 bytes packing 8 six-bit scales and 8 six-bit
  mins, 128 bytes of nibbles (each 32 bytes: low nibbles are one sub-block of 32, high
  nibbles the next); w = d * scale * q - dmin * min.
- Q5_K (176 bytes): as Q4_K with 32 more bytes of high bits before the nibbles (bit k of
  byte l is the fifth bit of weight l in sub-block k).
- Q6_K (210 bytes): 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales
  (one per 16 weights), d last; w = d * scale * (q - 32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256  # weights in one k-quant super-block


@dataclass(frozen=True)
class QuantizedTensor:
    """A GGUF-quantized tensor: raw block bytes, the GGML type, the logical shape."""

    data: torch.Tensor  # uint8, the blocks one after another
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.data, self.qtype, self.shape, dtype)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at byte `start` of every block, as float32, shaped (blocks, 1)."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor, run: int = 32) -> torch.Tensor:
    """(n, run k) bytes -> (n, 2 k, run): per `run` bytes, the low nibbles then the high."""
    chunks = packed.reshape(packed.shape[0], -1, run)
    return torch.stack([chunks & 0x0F, chunks >> 4], dim=2).reshape(packed.shape[0], -1, run)


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """(n, m) bytes -> (n, 8, m): bit k of every byte, in uint8."""
    return torch.stack([(packed >> k) & 1 for k in range(8)], dim=1)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * blocks[:, 2:].view(torch.int8).float()


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 2:], 16).reshape(-1, 32)
    return _f16(blocks, 0) * (q.float() - 8)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    # Bit j of the little-endian uint32 is bit j % 8 of its byte j // 8.
    high = _bits(blocks[:, 2:6]).transpose(1, 2).reshape(-1, 32)
    q = _nibbles(blocks[:, 6:], 16).reshape(-1, 32) | (high << 4)
    return _f16(blocks, 0) * (q.float() - 16)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 4:], 16).reshape(-1, 32)
    return _f16(blocks, 0) * q.float() + _f16(blocks, 2)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    high = _bits(blocks[:, 4:8]).transpose(1, 2).reshape(-1, 32)
    q = _nibbles(blocks[:, 8:], 16).reshape(-1, 32) | (high << 4)
    return _f16(blocks, 0) * q.float() + _f16(blocks, 2)


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins, each (n, 8, 1)."""
    s = packed.int()
    low, mid, high = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = torch.cat([low & 63, (high & 0x0F) | ((low >> 6) << 4)], dim=1)
    mins = torch.cat([mid & 63, (high >> 4) | ((mid >> 6) << 4)], dim=1)
    return scales.unsqueeze(-1).float(), mins.unsqueeze(-1).float()


def _k_affine(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """w = (d * scale) * q - dmin * min over 8 sub-blocks of 32 (q: (n, 8, 32))."""
    scales, mins = _k_scales(blocks[:, 4:16])
    d, dmin = _f16(blocks, 0).unsqueeze(-1), _f16(blocks, 2).unsqueeze(-1)
    return ((d * scales) * q.float() - dmin * mins).reshape(-1, QK_K)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    return _k_affine(blocks, _nibbles(blocks[:, 16:144]))


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    high = _bits(blocks[:, 16:48])  # (n, sub-block, weight)
    return _k_affine(blocks, _nibbles(blocks[:, 48:176]) | (high << 4))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    low = blocks[:, :128].reshape(n, 2, 64)
    high = blocks[:, 128:192].reshape(n, 2, 32)
    # Each half of 128 weights: four runs of 32, the 2-bit highs taken from bits 0-1 .. 6-7.
    runs = [low[..., :32] & 0x0F, low[..., 32:] & 0x0F, low[..., :32] >> 4, low[..., 32:] >> 4]
    q = torch.cat([run | (((high >> (2 * i)) & 3) << 4) for i, run in enumerate(runs)], dim=-1)
    scales = blocks[:, 192:208].view(torch.int8).float().reshape(n, 16, 1)
    d = _f16(blocks, 208).reshape(n, 1, 1)
    return ((d * scales) * (q.reshape(n, 16, 16).float() - 32)).reshape(n, QK_K)


DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q5_0: _q5_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q5_1: _q5_1,
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q5_K: _q5_k,
    GGMLQuantizationType.Q6_K: _q6_k,
}
SUPPORTED_TYPES = tuple(DEQUANTIZERS)


def byte_count(qtype: GGMLQuantizationType, numel: int) -> int:
    """Bytes that `numel` weights of `qtype` occupy (numel a whole number of blocks)."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if numel % block_size:
        raise ValueError(f"{qtype.name}: {numel} weights are not whole blocks of {block_size}")
    return numel // block_size * type_size


def dequantize(data: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, ...],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Block bytes of `qtype` -> a `shape` tensor of `dtype` (computed in float32)."""
    if qtype not in DEQUANTIZERS:
        raise ValueError(f"unsupported GGUF quantization {qtype.name}")
    numel = 1
    for size in shape:
        numel *= size
    if data.numel() != byte_count(qtype, numel):
        raise ValueError(f"{qtype.name} {list(shape)} needs {byte_count(qtype, numel)} bytes, "
                         f"got {data.numel()}")
    blocks = data.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    return DEQUANTIZERS[qtype](blocks).reshape(shape).to(dtype)
