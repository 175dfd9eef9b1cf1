"""Helpers the types' unpackers share (Packing.unpack in quant/types.py: one GGUF block of one
row -> the small unsigned codes u per weight and the block's scale fields as bytes)."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f32_to_u32_bits


@njit(inline="always")
def copy_f16(rec, at, w, o):
    """The file's f16 field at byte o of w, copied as it is to rec[at:at + 2]."""
    rec[at] = w[o]
    rec[at + 1] = w[o + 1]


@njit(inline="always")
def negated_f16(rec, at, w, o):
    """-x for the file's f16 field x at byte o of w (the sign bit flipped: exact)."""
    rec[at] = w[o]
    rec[at + 1] = w[o + 1] ^ 0x80


@njit(inline="always")
def put_f32(rec, at, v):
    bits = np.int64(f32_to_u32_bits(np.float32(v)))
    for k in range(4):
        rec[at + k] = (bits >> (8 * k)) & 0xFF


@njit(inline="always")
def nibbles32(w, at, u):
    """The 16 bytes at `at` hold 32 4-bit codes: weight j in the low nibble of byte j, weight
    j + 16 in the high nibble (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4, each IQ4_XS group)."""
    for j in range(16):
        b = w[at + j]
        u[j] = b & 15
        u[j + 16] = b >> 4


@njit(inline="always")
def by_unit(y, u, rec, s, sub, unit, off):
    """For unpackers that go through the exact decoder (y: the decoded block): sub-block s
    (weights s*sub ..) gets its unit (scale) as a float32 field at rec[4 s] and u = round(y /
    unit) + off. The weights of these types are integer multiples of their unit (the tests hold
    scale * u - min to the decoder)."""
    put_f32(rec, 4 * s, unit)
    for i in range(s * sub, s * sub + sub):
        v = y[i] / unit if unit != 0 else np.float32(0.0)
        if not abs(v) < 200:   # only in a corrupt block (inf/nan scales)
            v = np.float32(0.0)
        u[i] = np.uint8(min(255, max(0, int(np.rint(v)) + off)))
