"""K-quants: 256-weight super-blocks with quantized sub-block scales (Q2_K .. Q6_K).

Bit planes are laid out in 32-byte strips: a byte at strip position j of a strip holds the bits
of weights j, j+32, j+64, ... of that strip's 128-weight half (2-bit planes) or 64-weight group.

block_q2_K (256 w, 84 B):  scales u8[16] (lo: scale, hi: min) | qs u8[64] (2 bit) | d f16 | dmin f16
    w = d*sc*q - dmin*m over 16 sub-blocks of 16
block_q3_K (256 w, 110 B): hmask u8[32] | qs u8[64] (low 2 bits) | scales 6 bit x16 in 12 B | d f16
    q = low2 - 4*(1 - hbit), w = d*(sc-32)*q over 16 sub-blocks of 16
block_q4_K (256 w, 144 B): d f16 | dmin f16 | scales 6 bit (8 scales + 8 mins) in 12 B | qs u8[128]
    w = d*sc*q - dmin*m over 8 sub-blocks of 32
block_q5_K (256 w, 176 B): d f16 | dmin f16 | scales[12] | qh u8[32] | qs u8[128]
block_q6_K (256 w, 210 B): ql u8[128] | qh u8[64] | scales i8[16] | d f16
    q = low4 | high2 << 4, w = d*sc*(q-32) over 16 sub-blocks of 16
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16
from ..types import register


@njit(inline="always")
def crumb(w, at, i):
    """2-bit plane value of weight i (0..255) in 64 bytes at `at`: strips of 32 bytes, 4 planes."""
    half, r = divmod(i, 128)
    return (w[at + half * 32 + r % 32] >> (2 * (r // 32))) & 3


@njit(inline="always")
def high_bit(w, at, i):
    """Bit i // 32 of byte i % 32 of the 32-byte mask at `at`."""
    return (w[at + i % 32] >> (i // 32)) & 1


@njit(inline="always")
def nibble(w, at, i):
    """4-bit value of weight i in 128 bytes at `at`: strips of 32 bytes, low nibbles first."""
    group, r = divmod(i, 64)
    return (w[at + group * 32 + r % 32] >> (4 * (r // 32))) & 15


@njit(inline="always")
def scale_min_k4(w, at, j):
    """Scale and min of sub-block j (0..7) from the 12-byte packed 6-bit table at `at`."""
    if j < 4:
        return w[at + j] & 63, w[at + j + 4] & 63
    sc = (w[at + j + 4] & 15) | ((w[at + j - 4] >> 6) << 4)
    m = (w[at + j + 4] >> 4) | ((w[at + j] >> 6) << 4)
    return sc, m


@njit(inline="always")
def q3k_scale(w, at, j):
    """Signed 6-bit scale of sub-block j (0..15) from the 12-byte table at `at`."""
    lo = (w[at + j % 8] >> (4 * (j // 8))) & 15
    hi = (w[at + 8 + j % 4] >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


@njit(inline="always")
def decode_q2_k(w, o, y):
    d = f16(w, o + 80)
    dmin = f16(w, o + 82)
    for s in range(16):
        sc = w[o + s]
        dl = d * np.float32(sc & 15)
        ml = dmin * np.float32(sc >> 4)
        for i in range(16 * s, 16 * s + 16):
            y[i] = dl * np.float32(crumb(w, o + 16, i)) - ml


@njit(inline="always")
def decode_q3_k(w, o, y):
    d = f16(w, o + 108)
    for s in range(16):
        dl = d * np.float32(q3k_scale(w, o + 96, s))
        for i in range(16 * s, 16 * s + 16):
            q = crumb(w, o + 32, i) - 4 * (1 - high_bit(w, o, i))
            y[i] = dl * np.float32(q)


@njit(inline="always")
def _decode_q45_k(w, o, y, qs_at, qh_at):
    # Q4_K and Q5_K share everything but the fifth bit (qh_at < 0: none).
    d = f16(w, o)
    dmin = f16(w, o + 2)
    for s in range(8):
        sc, m = scale_min_k4(w, o + 4, s)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(m)
        for i in range(32 * s, 32 * s + 32):
            q = nibble(w, qs_at, i)
            if qh_at >= 0:
                q |= high_bit(w, qh_at, i) << 4
            y[i] = dl * np.float32(q) - ml


@njit(inline="always")
def decode_q4_k(w, o, y):
    _decode_q45_k(w, o, y, o + 16, -1)


@njit(inline="always")
def decode_q5_k(w, o, y):
    _decode_q45_k(w, o, y, o + 48, o + 16)


@njit(inline="always")
def decode_q6_k(w, o, y):
    d = f16(w, o + 208)
    for s in range(16):
        dl = d * np.float32(np.int8(w[o + 192 + s]))
        for i in range(16 * s, 16 * s + 16):
            half, r = divmod(i, 128)
            lo = (w[o + half * 64 + r % 64] >> (4 * (r // 64))) & 15
            hi = crumb(w, o + 128, i)
            y[i] = dl * np.float32((lo | (hi << 4)) - 32)


Q2_K = register("Q2_K", "k", decode_q2_k)
Q3_K = register("Q3_K", "k", decode_q3_k)
Q4_K = register("Q4_K", "k", decode_q4_k)
Q5_K = register("Q5_K", "k", decode_q5_k)
Q6_K = register("Q6_K", "k", decode_q6_k)
