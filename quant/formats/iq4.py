"""IQ4 types: 4-bit indices into a fixed non-linear table of 16 values (IQ4NL_VALUES).

block_iq4_nl (32 w, 18 B): d f16 | qs u8[16]     w[j] = d*T[lo(qs[j])], w[j+16] = d*T[hi(qs[j])]
block_iq4_xs (256 w, 136 B): d f16 | scales_h u16 (2 bit x8) | scales_l u8[4] (4 bit x8)
    | qs u8[128];  per 32 weights: w = d*(s-32) * T[q], nibbles laid out as in IQ4_NL
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, u16
from ..tables import IQ4NL_VALUES
from ..types import register


@njit(inline="always")
def put_nl32(y, at, w, qs_at, d):
    for j in range(16):
        b = w[qs_at + j]
        y[at + j] = d * IQ4NL_VALUES[b & 15]
        y[at + j + 16] = d * IQ4NL_VALUES[b >> 4]


@njit(inline="always")
def decode_iq4_nl(w, o, y):
    put_nl32(y, 0, w, o + 2, f16(w, o))


@njit(inline="always")
def decode_iq4_xs(w, o, y):
    d = f16(w, o)
    scales_h = u16(w, o + 2)
    for ib in range(8):
        s = ((w[o + 4 + ib // 2] >> (4 * (ib % 2))) & 15) | (((scales_h >> (2 * ib)) & 3) << 4)
        put_nl32(y, 32 * ib, w, o + 8 + 16 * ib, d * np.float32(s - 32))


IQ4_NL = register("IQ4_NL", "iq4", decode_iq4_nl)
IQ4_XS = register("IQ4_XS", "iq4", decode_iq4_xs)
