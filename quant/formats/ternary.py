"""Ternary types (weights in {-1, 0, 1} times a block scale): TQ1_0, TQ2_0.

block_tq1_0 (256 w, 54 B): qs u8[48] (5 trits per byte, base-3 fixed point) | qh u8[4] (4 trits
    per byte) | d f16.  Trit n of byte b is ((b * 3^n mod 256) * 3) >> 8.
    Order: qs[0:32] hold weights n*32 + j (n < 5), qs[32:48] weights 160 + n*16 + j,
    qh weights 240 + n*4 + j (n < 4).
block_tq2_0 (256 w, 66 B): qs u8[64] (2 bit, strips of 32 bytes as in Q2_K) | d f16
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16
from .kquants import crumb
from ..types import Packing, register
from .unpacking import copy_f16


@njit(inline="always")
def trit(b, n):
    return (((b * 3 ** n) & 255) * 3 >> 8) - 1


@njit(inline="always")
def decode_tq1_0(w, o, y):
    d = f16(w, o + 52)
    for n in range(5):
        for j in range(32):
            y[n * 32 + j] = d * np.float32(trit(w[o + j], n))
        for j in range(16):
            y[160 + n * 16 + j] = d * np.float32(trit(w[o + 32 + j], n))
    for n in range(4):
        for j in range(4):
            y[240 + n * 4 + j] = d * np.float32(trit(w[o + 48 + j], n))


@njit(inline="always")
def decode_tq2_0(w, o, y):
    d = f16(w, o + 64)
    for i in range(256):
        y[i] = d * np.float32(crumb(w, o, i) - 1)


# Unpackers for the integer kernels: u = q + 1 in 0..2, d as in the file. TQ1_0's five trits per
# byte become 2-bit crumbs (2.06 bits per weight against the file's 1.69).

@njit(inline="always")
def unpack_tq1_0(w, o, u, rec, y):
    copy_f16(rec, 0, w, o + 52)
    for n in range(5):
        for j in range(32):
            u[n * 32 + j] = trit(w[o + j], n) + 1
        for j in range(16):
            u[160 + n * 16 + j] = trit(w[o + 32 + j], n) + 1
    for n in range(4):
        for j in range(4):
            u[240 + n * 4 + j] = trit(w[o + 48 + j], n) + 1


@njit(inline="always")
def unpack_tq2_0(w, o, u, rec, y):
    copy_f16(rec, 0, w, o + 64)
    for i in range(256):
        u[i] = crumb(w, o, i)


TQ1_0 = register("TQ1_0", "ternary", decode_tq1_0, None, Packing("crumb2", "f16", 32, 1, unpack_tq1_0))
TQ2_0 = register("TQ2_0", "ternary", decode_tq2_0, None, Packing("crumb2", "f16", 32, 1, unpack_tq2_0))
