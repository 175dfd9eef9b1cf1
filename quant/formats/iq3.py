"""IQ3 types: groups of 4 magnitudes snapped to a codebook, signs stored apart.

block_iq3_xxs (256 w, 98 B): d f16 | qs u8[64] (256-entry grid indices) | 8 x u32 (4 x 7 sign bits
    | 4-bit scale) per 32 weights;  w = d*(0.5+s)/2 * grid * sign, parity-implied 8th sign bit
block_iq3_s (256 w, 110 B): d f16 | qs u8[64] | qh u8[8] (9th index bit) | signs u8[32]
    | scales u8[4] (4 bit x8);  512-entry grid, w = d*(1+2s) * grid * sign
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, u32
from ..tables import IQ3S_GRID, IQ3XXS_GRID, KSIGNS
from ..types import register


@njit(inline="always")
def put_group4(y, at, db, grid, index, signs, first_sign):
    for k in range(4):
        v = db * grid[index, k]
        y[at + k] = -v if (signs >> (first_sign + k)) & 1 else v


@njit(inline="always")
def decode_iq3_xxs(w, o, y):
    d = f16(w, o)
    for ib in range(8):
        aux = u32(w, o + 66 + 4 * ib)
        db = d * (np.float32(0.5) + np.float32(aux >> 28)) * np.float32(0.5)
        for l in range(4):
            signs = KSIGNS[(aux >> (7 * l)) & 127]
            for h in range(2):
                put_group4(y, 32 * ib + 8 * l + 4 * h, db, IQ3XXS_GRID,
                           w[o + 2 + 8 * ib + 2 * l + h], signs, 4 * h)


@njit(inline="always")
def decode_iq3_s(w, o, y):
    d = f16(w, o)
    for i in range(64):
        index = w[o + 2 + i] | (((w[o + 66 + i // 8] >> (i % 8)) & 1) << 8)
        s = (w[o + 106 + i // 16] >> (4 * ((i // 8) % 2))) & 15
        db = d * np.float32(1 + 2 * s)
        put_group4(y, 4 * i, db, IQ3S_GRID, index, w[o + 74 + i // 2], 4 * (i % 2))


IQ3_XXS = register("IQ3_XXS", "iq3", decode_iq3_xxs)
IQ3_S = register("IQ3_S", "iq3", decode_iq3_s)
