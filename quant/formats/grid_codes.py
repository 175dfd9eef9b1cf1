"""What the grid types (IQ2_*, IQ3_*, IQ1_*) hand to the runtime's integer kernels at load.

Their kernels keep the file's bits (runtime/kernels/grids.py): a grid index per 8 (IQ2, IQ1) or
4 (IQ3) weights, a sign bit per weight, 4-bit scale codes and the float16 scale of each 256.
An unpacker turns one GGUF block into
    u[256]  a byte per weight: bit 0 = the weight's sign (1: negative; 0 for IQ1), and in bits
            1-7 of an entry's first two weights its grid index (bits 0-6, then 7-13); IQ1's
            index carries the delta's sign as bit 11
    rec     the block's d (the file's two float16 bytes), then the sub-block scale codes, two
            to a byte (low nibble first)
"""
from __future__ import annotations

from numba import njit


@njit(inline="always")
def put_entry(u, at, n, index, signs):
    """Weights at .. at + n - 1 (one grid entry): sign bit k of `signs` and the index."""
    for k in range(n):
        u[at + k] = (signs >> k) & 1
    u[at] |= (index & 127) << 1
    u[at + 1] |= ((index >> 7) & 127) << 1


@njit(inline="always")
def put_d(rec, w, o):
    rec[0] = w[o]
    rec[1] = w[o + 1]


@njit(inline="always")
def put_code(rec, k, code):
    """Sub-block k's scale code (0..15) into the nibbles after d."""
    if k % 2 == 0:
        rec[2 + k // 2] = code
    else:
        rec[2 + k // 2] |= code << 4
