"""CUDA-compatible normal noise on the CPU: Philox-4x32-10 followed by Box-Muller.

A1111's "NV" random source (setting ``randn_source = "NV"``) lets a machine without an
NVIDIA GPU produce the same initial noise that ``torch.randn`` gives on a CUDA device,
so seeds shared between users reproduce across hardware. This module re-implements
that emulation with numpy.

The counter-based generator is Philox-4x32 with 10 rounds (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC'11). For a request of ``n`` numbers the 128-bit
counter of element ``i`` is ``(offset, 0, i, 0)`` and the 64-bit key is the seed split
into (low 32 bits, high 32 bits). ``offset`` starts at 0 and grows by one per
``randn`` call (not per number), which mirrors how the upstream emulation advances.
Only output words 0 and 1 feed Box-Muller; one normal number comes out per element.

The arithmetic of Box-Muller is done in float64 with float32-rounded constants,
because that is what numpy's promotion of ``uint32 * float32`` produces upstream; the
result is cast to float32. Values match CUDA to about 1e-6, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Philox round multipliers and the Weyl-sequence key increments (Salmon et al. 2011).
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)
PHILOX_W1 = np.uint32(0xBB67AE85)
PHILOX_ROUNDS = 10

# 2**-32 and 2**-32 * 2*pi as stored upstream: float32 literals widened to float64.
TWO_POW32_INV = float(np.float32(2.3283064e-10))
TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _mulhilo(a: np.ndarray, multiplier: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """Full 32x32 -> 64-bit product, returned as (high word, low word), both uint32."""
    product = a.astype(np.uint64) * multiplier
    return (product >> _SHIFT32).astype(np.uint32), (product & _LOW32).astype(np.uint32)


def _philox_round(counter: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    """One Philox-4x32 round: two multiplications, then a word shuffle xored with the key."""
    hi0, lo0 = _mulhilo(counter[0], PHILOX_M0)
    hi1, lo1 = _mulhilo(counter[2], PHILOX_M1)
    return [hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0]


def philox4x32(counter: list[np.ndarray], key: list[np.ndarray],
               rounds: int = PHILOX_ROUNDS) -> list[np.ndarray]:
    """Apply ``rounds`` Philox rounds, bumping the key between rounds (rounds - 1 times)."""
    key = [k.copy() for k in key]
    for round_index in range(rounds):
        if round_index > 0:
            # uint32 addition wraps modulo 2**32, which is what the cipher specifies.
            with np.errstate(over="ignore"):
                key = [key[0] + PHILOX_W0, key[1] + PHILOX_W1]
        counter = _philox_round(counter, key)
    return counter


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Map two uint32 words per element to one standard normal float32 (the sine branch)."""
    u = x.astype(np.float64) * TWO_POW32_INV + TWO_POW32_INV / 2
    v = y.astype(np.float64) * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2
    radius = np.sqrt(-2.0 * np.log(u))
    return (radius * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """Counter-based normal generator that reproduces CUDA ``torch.randn`` streams.

    Each ``randn`` call consumes one counter offset, so two generators with the same
    seed give the same sequence of arrays for the same sequence of shapes.
    """

    def __init__(self, seed: int, *, offset: int = 0) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = int(offset)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        """Draw standard normal float32 numbers of ``shape``; advances the offset by one."""
        shape = tuple(int(s) for s in shape)
        count = int(np.prod(shape, dtype=np.int64))
        zeros = np.zeros(count, dtype=np.uint32)
        counter = [
            np.full(count, self.offset & 0xFFFFFFFF, dtype=np.uint32),
            zeros,
            np.arange(count, dtype=np.uint32),
            zeros,
        ]
        key = [
            np.full(count, self.seed & 0xFFFFFFFF, dtype=np.uint32),
            np.full(count, self.seed >> 32, dtype=np.uint32),
        ]
        self.offset += 1
        words = philox4x32(counter, key)
        return box_muller(words[0], words[1]).reshape(shape)
