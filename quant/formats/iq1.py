"""IQ1 types: groups of 8 ternary values (-1, 0, 1) from a 2048-point grid, shifted by +-delta.

block_iq1_s (256 w, 50 B): d f16 | qs u8[32] (low 8 index bits) | qh u16[8]
    per 32 weights, qh: 4 x 3 high index bits | 3-bit scale s | delta sign (bit 15)
    w = d*(2s+1) * (grid + delta)
block_iq1_m (256 w, 56 B): qs u8[32] | qh u8[16] (per group of 8: 3 high index bits + delta sign)
    | scales u16[4]: 3-bit scale per 16 weights x 4 in bits 0..11, and the f16 super-scale d
    spread over the top nibbles (bits 12..15) of the four words
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, f16_bits_to_f32, u16
from ..tables import IQ1_DELTA, IQ1S_GRID
from ..types import register


@njit(inline="always")
def put_ternary8(y, at, dl, index, negative_delta):
    delta = -IQ1_DELTA if negative_delta else IQ1_DELTA
    for k in range(8):
        y[at + k] = dl * (IQ1S_GRID[index, k] + delta)


@njit(inline="always")
def decode_iq1_s(w, o, y):
    d = f16(w, o)
    for ib in range(8):
        qh = u16(w, o + 34 + 2 * ib)
        dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
        for l in range(4):
            index = w[o + 2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)
            put_ternary8(y, 32 * ib + 8 * l, dl, index, qh & 0x8000)


@njit(inline="always")
def decode_iq1_m(w, o, y):
    sc0 = u16(w, o + 48)
    sc1 = u16(w, o + 50)
    sc2 = u16(w, o + 52)
    sc3 = u16(w, o + 54)
    d = f16_bits_to_f32((sc0 >> 12) | ((sc1 >> 8) & 0xF0) | ((sc2 >> 4) & 0xF00) | (sc3 & 0xF000))
    for i in range(32):
        s = (u16(w, o + 48 + 2 * (i // 8)) >> (3 * ((i // 2) % 4))) & 7
        dl = d * np.float32(2 * s + 1)
        h = (w[o + 32 + i // 2] >> (4 * (i % 2))) & 15
        put_ternary8(y, 8 * i, dl, w[o + i] | ((h & 7) << 8), h & 8)


IQ1_S = register("IQ1_S", "iq1", decode_iq1_s)
IQ1_M = register("IQ1_M", "iq1", decode_iq1_m)
