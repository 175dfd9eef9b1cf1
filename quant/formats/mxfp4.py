"""MXFP4: 32 e2m1 values sharing a power-of-two (e8m0) scale.

block_mxfp4 (32 w, 17 B): e u8 | qs u8[16]     w[j] = s*T[lo(qs[j])], w[j+16] = s*T[hi(qs[j])]
    with T the doubled e2m1 values and s = 2^(e-128), i.e. half of 2^(e-127), as an exact f32.
"""
from __future__ import annotations

from numba import njit

from ..bits import u32_bits_to_f32
from ..tables import MXFP4_VALUES
from ..types import Packing, register
from .unpacking import nibbles32


@njit(inline="always")
def e8m0_half(e):
    # 2^(e-128) as f32 bits: subnormal for e < 2, else exponent field e-1
    return u32_bits_to_f32((0x00200000 << e) if e < 2 else ((e - 1) << 23))


@njit(inline="always")
def decode_mxfp4(w, o, y):
    d = e8m0_half(int(w[o]))
    for j in range(16):
        b = w[o + 1 + j]
        y[j] = d * MXFP4_VALUES[b & 15]
        y[j + 16] = d * MXFP4_VALUES[b >> 4]


@njit(inline="always")
def unpack_mxfp4(w, o, u, rec, y):
    # rec: the exponent byte; u the 4-bit index (value = T[u] + 12, looked up in the kernel)
    rec[0] = w[o]
    nibbles32(w, o + 1, u)


MXFP4 = register("MXFP4", "mx", decode_mxfp4, None,
                 Packing("lut4", "e8m0", 32, 12, unpack_mxfp4, tuple(int(v) + 12 for v in MXFP4_VALUES)))
