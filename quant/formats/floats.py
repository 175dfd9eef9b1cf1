"""Unquantized types: F32, F16, BF16 (block size 1; decoders fill len(y) values at once).

Encoders fill the whole row: F32 copies the bits, F16 rounds to nearest even (as numpy's cast,
overflow to infinity, NaN stays NaN), BF16 rounds to nearest even on the top half of the f32
bits with NaN forced quiet (as ggml_compute_fp32_to_bf16 and gguf-py).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, u16, u32, u32_bits_to_f32
from ..encode_helpers import f32_to_f16_bits, put_u16, put_u32
from ..types import register


@njit(inline="always")
def decode_f32(w, o, y):
    for i in range(y.shape[0]):
        y[i] = u32_bits_to_f32(u32(w, o + 4 * i))


@njit(inline="always")
def decode_f16(w, o, y):
    for i in range(y.shape[0]):
        y[i] = f16(w, o + 2 * i)


@njit(inline="always")
def decode_bf16(w, o, y):
    # bf16 is the top half of an f32
    for i in range(y.shape[0]):
        y[i] = u32_bits_to_f32(u16(w, o + 2 * i) << 16)


@njit
def encode_f32(x, imp, out):
    bits = x.view(np.uint32)
    for i in range(x.shape[0]):
        put_u32(out, 4 * i, np.int64(bits[i]))


@njit(inline="always")
def f32_bits_to_f16(n, v):
    """f16 bits of the f32 v (bits n): nearest even; a NaN keeps its sign and top payload bits
    unquieted (at least one set), as numpy's cast does (the hardware conversion quiets it)."""
    if (n & 0x7FFFFFFF) > 0x7F800000:
        payload = (n & 0x7FFFFF) >> 13
        return ((n >> 16) & 0x8000) | 0x7C00 | (payload if payload else 1)
    return np.int64(f32_to_f16_bits(v))


@njit
def encode_f16(x, imp, out):
    bits = x.view(np.uint32)
    for i in range(x.shape[0]):
        put_u16(out, 2 * i, f32_bits_to_f16(np.int64(bits[i]), x[i]))


@njit(inline="always")
def f32_bits_to_bf16(n):
    """Round the f32 with bits n (int64, 0 <= n < 2^32) to bf16 bits, nearest even, NaN quiet."""
    if (n & 0x7FFFFFFF) > 0x7F800000:
        return ((n >> 16) & 0xFFFF) | 0x40
    return ((n + 0x7FFF + ((n >> 16) & 1)) >> 16) & 0xFFFF


@njit
def encode_bf16(x, imp, out):
    bits = x.view(np.uint32)
    for i in range(x.shape[0]):
        put_u16(out, 2 * i, f32_bits_to_bf16(np.int64(bits[i])))


F32 = register("F32", "float", decode_f32, encode_f32)
F16 = register("F16", "float", decode_f16, encode_f16)
BF16 = register("BF16", "float", decode_bf16, encode_bf16)
