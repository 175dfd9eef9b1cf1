"""Helpers the types' unpackers share (Packing.unpack in quant/types.py: one GGUF block of one
row -> the small unsigned codes u per weight and the block's scale fields as bytes)."""
from __future__ import annotations

from numba import njit


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
def nibbles32(w, at, u):
    """The 16 bytes at `at` hold 32 4-bit codes: weight j in the low nibble of byte j, weight
    j + 16 in the high nibble (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4, each IQ4_XS group)."""
    for j in range(16):
        b = w[at + j]
        u[j] = b & 15
        u[j + 16] = b >> 4
