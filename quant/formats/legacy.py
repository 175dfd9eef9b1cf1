"""The legacy 32-weight block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

block_q4_0 (32 w, 18 B): d f16 | qs u8[16]      w[j] = d*(lo(qs[j])-8), w[j+16] = d*(hi(qs[j])-8)
block_q4_1 (32 w, 20 B): d f16 | m f16 | qs u8[16]                  w = d*q + m
block_q5_0 (32 w, 22 B): d f16 | qh u32 | qs u8[16]   q = nibble | bit j of qh << 4; w = d*(q-16)
block_q5_1 (32 w, 24 B): d f16 | m f16 | qh u32 | qs u8[16]         w = d*q + m
block_q8_0 (32 w, 34 B): d f16 | qs i8[32]                          w = d*q
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, u32
from ..encode_helpers import nearest_int, put_f16
from ..types import register


@njit(inline="always")
def decode_q4_0(w, o, y):
    d = f16(w, o)
    for j in range(16):
        b = w[o + 2 + j]
        y[j] = d * np.float32((b & 15) - 8)
        y[j + 16] = d * np.float32((b >> 4) - 8)


@njit(inline="always")
def decode_q4_1(w, o, y):
    d = f16(w, o)
    m = f16(w, o + 2)
    for j in range(16):
        b = w[o + 4 + j]
        y[j] = d * np.float32(b & 15) + m
        y[j + 16] = d * np.float32(b >> 4) + m


@njit(inline="always")
def _q5_values(w, qh_at, qs_at, j):
    """The two 5-bit quants (j and j+16) of a Q5 block, unsigned."""
    qh = u32(w, qh_at)
    b = w[qs_at + j]
    lo = (b & 15) | (((qh >> j) & 1) << 4)
    hi = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
    return lo, hi


@njit(inline="always")
def decode_q5_0(w, o, y):
    d = f16(w, o)
    for j in range(16):
        lo, hi = _q5_values(w, o + 2, o + 6, j)
        y[j] = d * np.float32(lo - 16)
        y[j + 16] = d * np.float32(hi - 16)


@njit(inline="always")
def decode_q5_1(w, o, y):
    d = f16(w, o)
    m = f16(w, o + 2)
    for j in range(16):
        lo, hi = _q5_values(w, o + 4, o + 8, j)
        y[j] = d * np.float32(lo) + m
        y[j + 16] = d * np.float32(hi) + m


@njit(inline="always")
def decode_q8_0(w, o, y):
    d = f16(w, o)
    for j in range(32):
        y[j] = np.float32(np.int8(w[o + 2 + j])) * d


@njit
def encode_q8_0(x, imp, out):
    # Round to nearest on the symmetric grid d * [-127, 127]; importance cannot change the
    # optimum by much at 8 bits, so, as ggml, it is not used.
    for b in range(x.shape[0] // 32):
        o = b * 34
        amax = np.float32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[b * 32 + j]))
        d = put_f16(out, o, amax / np.float32(127.0))
        inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        for j in range(32):
            out[o + 2 + j] = np.uint8(nearest_int(x[b * 32 + j] * inv) & 0xFF)


Q4_0 = register("Q4_0", "legacy", decode_q4_0)
Q4_1 = register("Q4_1", "legacy", decode_q4_1)
Q5_0 = register("Q5_0", "legacy", decode_q5_0)
Q5_1 = register("Q5_1", "legacy", decode_q5_1)
Q8_0 = register("Q8_0", "legacy", decode_q8_0, encode_q8_0)
