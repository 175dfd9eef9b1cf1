"""Small numba helpers shared by the encoders: storing integers and halves, rounding."""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .bits import f16_bits_to_f32


@intrinsic
def f32_to_f16_bits(typingctx, value):
    """IEEE round-to-nearest-even of an f32 to half precision, as its 16 bits (uint16)."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type != ir.FloatType():
            v = builder.fptrunc(v, ir.FloatType())
        half = builder.fptrunc(v, ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return types.uint16(value), codegen


@njit(inline="always")
def round_to_f16(v):
    """The f32 value an f16 field will hold after storing v (what the decoder will read)."""
    return f16_bits_to_f32(f32_to_f16_bits(np.float32(v)))


@njit(inline="always")
def put_u16(out, o, v):
    out[o] = v & 0xFF
    out[o + 1] = (v >> 8) & 0xFF


@njit(inline="always")
def put_u32(out, o, v):
    put_u16(out, o, v & 0xFFFF)
    put_u16(out, o + 2, (v >> 16) & 0xFFFF)


@njit(inline="always")
def put_f16(out, o, v):
    """Store v as f16 at byte o; returns the stored value as f32."""
    bits = f32_to_f16_bits(np.float32(v))
    put_u16(out, o, np.int64(bits))
    return f16_bits_to_f32(bits)


@njit(inline="always")
def nearest_int(v):
    """Round to the nearest integer, ties to even (the FPU's rounding, as ggml's nearest_int)."""
    return int(np.rint(v))
