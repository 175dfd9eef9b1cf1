"""Scale encodings: how the scales (and mins) of one block of 16 rows are stored, and their
decoder. A row's block brings a record of fields (Packing.unpack writes it: f16 fields as the
file's bytes, one byte per code); the 16 rows' records are stored field by field, each field
as 16 rows x its width, so that a field of the 16 rows is one vector load:

    f16          d                                  scale = d              (Q4_0, Q8_0, ...)
    f16_min      d | min                            scale = d, min         (Q4_1, Q5_1)
    e8m0         e (a byte)                         scale = 2^(e - 128)    (MXFP4)
    f16_i8       d | code[n_sub] (int8)             scale = d * code       (Q3_K, Q6_K, IQ4_XS)
    f16_u8_min   d | dmin | sc[n_sub] | m[n_sub]    scale = d * sc, min = dmin * m  (Q4_K, Q5_K)
    f16_nib_min  d | dmin | b[n_sub]                scale = d * (b & 15), min = dmin * (b >> 4) (Q2_K)
    f16_nib_quarter  d | 4-bit codes, 8 to a field  scale = d (c + 1/2) / 4  (IQ2_*; IQ1_*: d (2c + 1) / 8)
    f16_nib_half     d | 4-bit codes, 8 to a field  scale = d (c + 1/2) / 2  (IQ3_XXS)
    f16_nib_odd      d | 4-bit codes, 8 to a field  scale = d (2c + 1)       (IQ3_S)
      (each 4-byte field holds a row's codes of 8 sub-blocks, sub-block k in bits 4k .. 4k + 3:
      the 16 rows' field is one 64-byte vector, row r in i32 lane r)

Each encoding gives fields(n_sub) (the widths in bytes, in order) and two njit decoders,
scale(q, at, n_sub, j) and minimum(q, at, n_sub, j) -> f32x16 (sub-block j's 16 values; `at`
the block's scale area). The products are those of the exact decoders (d * code in float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

from .simd import (add_f32x16, and_i32x16, e8m0_half_f32x16, load_bytes64, load_f16x16, load_i8x16,
                   load_u8x16, mul_f32x16, shift_i32x16, splat_f32, splat_i32, to_f32x16, zeros_f32x16)


@dataclass(frozen=True)
class ScaleCode:
    name: str
    fields: Callable      # n_sub -> tuple of field widths in bytes
    scale: Callable
    minimum: Callable     # for the affine encodings; the others return zeros

    def bytes(self, n_sub: int) -> int:
        """Bytes of one block's scale area for 16 rows."""
        return 16 * sum(self.fields(n_sub))


@njit(inline="always")
def _none(q, at, n_sub, j):
    return zeros_f32x16()


@njit(inline="always")
def _f16_scale(q, at, n_sub, j):
    return load_f16x16(q, at)


@njit(inline="always")
def _f16_second(q, at, n_sub, j):
    return load_f16x16(q, at + 32)


@njit(inline="always")
def _e8m0_scale(q, at, n_sub, j):
    return e8m0_half_f32x16(load_u8x16(q, at))


@njit(inline="always")
def _f16_i8_scale(q, at, n_sub, j):
    return mul_f32x16(load_f16x16(q, at), to_f32x16(load_i8x16(q, at + 32 + 16 * j)))


@njit(inline="always")
def _f16_u8_scale(q, at, n_sub, j):
    return mul_f32x16(load_f16x16(q, at), to_f32x16(load_u8x16(q, at + 64 + 16 * j)))


@njit(inline="always")
def _f16_u8_min(q, at, n_sub, j):
    return mul_f32x16(load_f16x16(q, at + 32), to_f32x16(load_u8x16(q, at + 64 + 16 * (n_sub + j))))


@njit(inline="always")
def _f16_nib_scale(q, at, n_sub, j):
    b = load_u8x16(q, at + 64 + 16 * j)
    return mul_f32x16(load_f16x16(q, at), to_f32x16(and_i32x16(b, splat_i32(15))))


@njit(inline="always")
def _f16_nib_min(q, at, n_sub, j):
    b = load_u8x16(q, at + 64 + 16 * j)
    return mul_f32x16(load_f16x16(q, at + 32), to_f32x16(shift_i32x16(b, -4)))


def _nib_codes(mul: float, add: float):
    """scale = d (mul c + add) for the 4-bit code c of sub-block j: the product the grid types'
    decoders compute (mul c + add is exact; one rounding in the multiply by d)."""
    @njit(inline="always")
    def scale(q, at, n_sub, j):
        codes = load_bytes64(q, at + 32 + 64 * (j // 8))
        c = to_f32x16(and_i32x16(shift_i32x16(codes, -4 * (j % 8)), splat_i32(15)))
        m = mul_f32x16(c, splat_f32(np.float32(mul)))
        return mul_f32x16(add_f32x16(m, splat_f32(np.float32(add))), load_f16x16(q, at))

    return scale


def _nib_fields(n_sub: int) -> tuple[int, ...]:
    return (2,) + (4,) * (n_sub // 8)


SCALE_CODES = {c.name: c for c in (
    ScaleCode("f16", lambda n: (2,), _f16_scale, _none),
    ScaleCode("f16_min", lambda n: (2, 2), _f16_scale, _f16_second),
    ScaleCode("e8m0", lambda n: (1,), _e8m0_scale, _none),
    ScaleCode("f16_i8", lambda n: (2,) + (1,) * n, _f16_i8_scale, _none),
    ScaleCode("f16_u8_min", lambda n: (2, 2) + (1,) * (2 * n), _f16_u8_scale, _f16_u8_min),
    ScaleCode("f16_nib_min", lambda n: (2, 2) + (1,) * n, _f16_nib_scale, _f16_nib_min),
    ScaleCode("f16_nib_quarter", _nib_fields, _nib_codes(0.25, 0.125), _none),
    ScaleCode("f16_nib_half", _nib_fields, _nib_codes(0.5, 0.25), _none),
    ScaleCode("f16_nib_odd", _nib_fields, _nib_codes(2.0, 1.0), _none),
)}
