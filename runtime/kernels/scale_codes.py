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
    f32          unit[n_sub] (float32)              scale = unit           (types unpacked
                                                                           through their decoder)

Each encoding gives fields(n_sub) (the widths in bytes, in order) and two njit decoders,
scale(q, at, n_sub, j) and minimum(q, at, n_sub, j) -> f32x16 (sub-block j's 16 values; `at`
the block's scale area). The products are those of the exact decoders (d * code in float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from numba import njit

from .simd import (and_i32x16, e8m0_half_f32x16, load_f16x16, load_f32x16, load_i8x16, load_u8x16,
                   mul_f32x16, shift_i32x16, splat_i32, to_f32x16, zeros_f32x16)


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


@njit(inline="always")
def _f32_scale(q, at, n_sub, j):
    return load_f32x16(q, at + 64 * j)


SCALE_CODES = {c.name: c for c in (
    ScaleCode("f16", lambda n: (2,), _f16_scale, _none),
    ScaleCode("f16_min", lambda n: (2, 2), _f16_scale, _f16_second),
    ScaleCode("e8m0", lambda n: (1,), _e8m0_scale, _none),
    ScaleCode("f16_i8", lambda n: (2,) + (1,) * n, _f16_i8_scale, _none),
    ScaleCode("f16_u8_min", lambda n: (2, 2) + (1,) * (2 * n), _f16_u8_scale, _f16_u8_min),
    ScaleCode("f16_nib_min", lambda n: (2, 2) + (1,) * n, _f16_nib_scale, _f16_nib_min),
    ScaleCode("f32", lambda n: (4,) * n, _f32_scale, _none),
)}
