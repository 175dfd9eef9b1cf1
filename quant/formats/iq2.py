"""IQ2 types: groups of 8 magnitudes snapped to an E8-lattice codebook, signs stored apart.

block_iq2_xxs (256 w, 66 B): d f16 | 8 x (u32 grid indices: 4 x 8 bit | u32 signs+scale)
    per 32 weights: 4 codebook indices (256-entry grid) | 4 x 7 sign bits | 4-bit scale
    w = d*(0.5+s)/4 * grid * sign;  the 8th sign bit of each group follows from even parity
block_iq2_xs (256 w, 74 B): d f16 | qs u16[32] (9-bit index | 7 sign bits) | scales u8[8] (4 bit x16)
block_iq2_s (256 w, 82 B): d f16 | qs u8[32] | signs u8[32] | qh u8[8] (2 high index bits x32)
    | scales u8[8] (4 bit x16);  1024-entry grid, all 8 sign bits stored
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, u16, u32
from ..tables import IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KSIGNS
from ..types import register


@njit(inline="always")
def iq2_scale(d, s):
    return d * (np.float32(0.5) + np.float32(s)) * np.float32(0.25)


@njit(inline="always")
def put_group8(y, at, db, grid, index, signs):
    """Write the 8 weights db * grid[index] with sign bit k of `signs` negating weight k."""
    for k in range(8):
        v = db * grid[index, k]
        y[at + k] = -v if (signs >> k) & 1 else v


@njit(inline="always")
def decode_iq2_xxs(w, o, y):
    d = f16(w, o)
    for ib in range(8):
        at = o + 2 + 8 * ib
        aux = u32(w, at + 4)
        db = iq2_scale(d, aux >> 28)
        for l in range(4):
            put_group8(y, 32 * ib + 8 * l, db, IQ2XXS_GRID, w[at + l], KSIGNS[(aux >> (7 * l)) & 127])


@njit(inline="always")
def decode_iq2_xs(w, o, y):
    d = f16(w, o)
    for i in range(32):
        q = u16(w, o + 2 + 2 * i)
        s = (w[o + 66 + i // 4] >> (4 * ((i // 2) % 2))) & 15
        put_group8(y, 8 * i, iq2_scale(d, s), IQ2XS_GRID, q & 511, KSIGNS[q >> 9])


@njit(inline="always")
def decode_iq2_s(w, o, y):
    d = f16(w, o)
    for i in range(32):
        index = w[o + 2 + i] | (((w[o + 66 + i // 4] >> (2 * (i % 4))) & 3) << 8)
        s = (w[o + 74 + i // 4] >> (4 * ((i // 2) % 2))) & 15
        put_group8(y, 8 * i, iq2_scale(d, s), IQ2S_GRID, index, w[o + 34 + i])


IQ2_XXS = register("IQ2_XXS", "iq2", decode_iq2_xxs)
IQ2_XS = register("IQ2_XS", "iq2", decode_iq2_xs)
IQ2_S = register("IQ2_S", "iq2", decode_iq2_s)
