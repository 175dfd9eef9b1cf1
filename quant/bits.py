"""Bit-level helpers for numba code: little-endian reads and exact float reinterpretation."""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _as_int(builder, value, width):
    target = ir.IntType(width)
    if value.type.width > width:
        return builder.trunc(value, target)
    if value.type.width < width:
        return builder.zext(value, target)
    return value


@intrinsic
def f16_bits_to_f32(typingctx, bits):
    """The IEEE half whose bit pattern is the low 16 bits of `bits`, widened exactly to f32."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        half = builder.bitcast(_as_int(builder, args[0], 16), ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def u32_bits_to_f32(typingctx, bits):
    """The f32 whose bit pattern is the low 32 bits of `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_as_int(builder, args[0], 32), ir.FloatType())

    return types.float32(bits), codegen


@njit(inline="always")
def u16(w, o):
    """Unsigned little-endian 16-bit integer at byte `o` of the uint8 array `w` (as int64)."""
    return int(w[o]) | (int(w[o + 1]) << 8)


@njit(inline="always")
def u32(w, o):
    """Unsigned little-endian 32-bit integer at byte `o` of `w` (as int64, never negative)."""
    return u16(w, o) | (u16(w, o + 2) << 16)


@njit(inline="always")
def f16(w, o):
    """The f16 stored little-endian at byte `o` of `w`, as f32."""
    return f16_bits_to_f32(u16(w, o))


@njit(inline="always")
def packed_nibble(w, at, j):
    """Value j of 4-bit values packed two to a byte from `at`, low nibble first (the sub-block
    scales of IQ2_XS, IQ2_S, IQ3_S and IQ4_XS)."""
    return (w[at + j // 2] >> (4 * (j % 2))) & 15
