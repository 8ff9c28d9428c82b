"""Simple numpy quantizers for GGML's k-quants (Q4_K, Q5_K, Q6_K), for tests only.

`gguf.quants.quantize` implements the 32-weight formats (Q8_0, Q4_0, Q5_0) but raises
NotImplementedError for k-quants, which are what most city96 files use. These pack
round-to-nearest quantizations (no search for the best scales, unlike llama.cpp's) in
GGML's layouts, so that tests can write k-quant GGUF files; `gguf.quants.dequantize`
(the reference) reading them back close to the input is the check on the packing.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

QK_K = 256


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _safe(values: np.ndarray) -> np.ndarray:
    return np.where(values == 0, 1.0, values)


def _affine(x: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """Sub-blocks of 32: 6-bit scales / mins against per-block d / dmin; q in 0..levels."""
    sub = x.reshape(-1, 8, 32)
    low = np.minimum(sub.min(axis=2), 0.0)
    scale = (sub.max(axis=2) - low) / levels
    d = scale.max(axis=1, keepdims=True) / 63
    dmin = (-low).max(axis=1, keepdims=True) / 63
    sc = np.clip(np.rint(scale / _safe(d)), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(-low / _safe(dmin)), 0, 63).astype(np.uint8)
    step = (d.astype(np.float16).astype(np.float32) * sc)[..., None]
    offset = (dmin.astype(np.float16).astype(np.float32) * mn)[..., None]
    q = np.clip(np.rint((sub + offset) / _safe(step)), 0, levels).astype(np.uint8)
    return d, dmin, sc, mn, q


def _pack_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    return np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4),
    ], axis=1)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 8, 32) -> (n, 128): sub-block 2i in the low nibbles, 2i + 1 in the high."""
    return (q[:, 0::2] & 0x0F | ((q[:, 1::2] & 0x0F) << 4)).reshape(-1, 128)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, mn, q = _affine(x.reshape(-1, QK_K), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_scales(sc, mn),
                           _pack_nibbles(q)], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, mn, q = _affine(x.reshape(-1, QK_K), 31)
    high = ((q >> 4) & 1) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_scales(sc, mn),
                           high.sum(axis=1).astype(np.uint8), _pack_nibbles(q)], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(-1, 16, 16)
    scale = np.abs(sub).max(axis=2) / 31
    d = scale.max(axis=1, keepdims=True) / 127
    sc = np.clip(np.rint(scale / _safe(d)), 0, 127).astype(np.int8)
    step = (d.astype(np.float16).astype(np.float32) * sc)[..., None]
    q = (np.clip(np.rint(sub / _safe(step)), -32, 31) + 32).astype(np.uint8)
    runs = q.reshape(-1, 2, 4, 32)  # halves of 128, runs of 32
    low = np.concatenate([runs[:, :, 0] & 0x0F | ((runs[:, :, 2] & 0x0F) << 4),
                          runs[:, :, 1] & 0x0F | ((runs[:, :, 3] & 0x0F) << 4)], axis=2)
    high = sum(((runs[:, :, r] >> 4) & 3) << (2 * r) for r in range(4)).astype(np.uint8)
    return np.concatenate([low.reshape(-1, 128), high.reshape(-1, 64),
                           sc.view(np.uint8), _f16_bytes(d)], axis=1)


K_QUANTIZERS = {
    GGMLQuantizationType.Q4_K: quantize_q4_k,
    GGMLQuantizationType.Q5_K: quantize_q5_k,
    GGMLQuantizationType.Q6_K: quantize_q6_k,
}


def quantize(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Rows of `x` (last dim a multiple of 256) -> uint8 bytes shaped (rows..., bytes)."""
    from gguf import GGML_QUANT_SIZES, quants

    if qtype not in K_QUANTIZERS:
        return quants.quantize(x, qtype)
    rows = x.reshape(-1, x.shape[-1]).astype(np.float32)
    packed = K_QUANTIZERS[qtype](rows)
    row_bytes = x.shape[-1] // QK_K * GGML_QUANT_SIZES[qtype][1]
    return packed.reshape(*x.shape[:-1], row_bytes)
