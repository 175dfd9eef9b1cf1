"""Unquantized types: F32, F16, BF16 (block size 1; decoders fill len(y) values at once)."""
from __future__ import annotations

from numba import njit

from ..bits import f16, u16, u32, u32_bits_to_f32
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


F32 = register("F32", "float", decode_f32)
F16 = register("F16", "float", decode_f16)
BF16 = register("BF16", "float", decode_bf16)
