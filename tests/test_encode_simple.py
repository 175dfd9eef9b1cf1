"""Encoders of the simpler types: floats (bit-exact), legacy, IQ4, ternary and MXFP4.

The generic checks (error vs libgguf on random rows, zeros, outliers, bad input) are in
test_encoders.py; here: exactness of the float casts, and for the quantized types that an
encoding decodes to what its search assumed and beats ggml's reference on structured rows.
"""
from __future__ import annotations

import gguf.quants as gq
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType

from lowbit.quant.encode import NO_IMPORTANCE, quantize
from lowbit.quant.types import by_name


def edge_and_random_f32(rng, n_random=1 << 20):
    """f32 values whose rounding is delicate (ties, subnormals, overflow, NaN payloads), then
    random bit patterns of every kind."""
    edges = np.array([
        0, 0x80000000, 1, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
        0x7F800000, 0xFF800000, 0x7F800001, 0xFF800001, 0x7FC00000, 0xFFC00000, 0x7F802000,
        0x7FA00000, 0x7FFFFFFF, 0x7F801FFF, 0xFFBFFFFF,
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001,  # around f16's max 65504 and overflow
        0x33000000, 0x33000001, 0x33800000, 0x33C00000,  # around half of f16's smallest subnormal
        0x3F801000, 0x3F803000, 0x3F800FFF, 0x3F808000, 0x3F818000, 0x3F817FFF,  # ties
    ], dtype=np.uint32)
    rand = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(np.uint32)
    # random values near 1 hit f16 and bf16 ties often enough
    near_one = (0x3F800000 + rng.integers(0, 1 << 17, n_random // 4)).astype(np.uint32)
    return np.concatenate([edges, rand, near_one]).view(np.float32)


def encode_direct(name, x):
    """The row encoder called directly (quantize() refuses NaN and infinities)."""
    qtype = by_name(name)
    out = np.empty(qtype.row_bytes(x.size), np.uint8)
    qtype.encode_row(np.ascontiguousarray(x, np.float32), NO_IMPORTANCE, out)
    return out


def test_f16_equals_numpy_cast_bit_for_bit(rng):
    x = edge_and_random_f32(rng)
    with np.errstate(all="ignore"):
        expected = x.astype(np.float16).view(np.uint8)
    np.testing.assert_array_equal(encode_direct("F16", x), expected)


def test_bf16_equals_gguf_py_bit_for_bit(rng):
    x = edge_and_random_f32(rng)
    expected = gq.quantize(x, GGMLQuantizationType.BF16).reshape(-1)
    np.testing.assert_array_equal(encode_direct("BF16", x), expected)


def test_f32_is_a_copy(rng):
    x = edge_and_random_f32(rng, 1 << 12)
    np.testing.assert_array_equal(encode_direct("F32", x), x.view(np.uint8))


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_float_rows_through_the_driver(name, rng):
    rows = (rng.standard_normal((5, 96)) * 3).astype(np.float32)
    raw = quantize(rows, by_name(name), np.ones(96, np.float32))
    expected = {"F32": rows.view(np.uint8), "F16": rows.astype(np.float16).view(np.uint8),
                "BF16": gq.quantize(rows, GGMLQuantizationType.BF16)}[name]
    np.testing.assert_array_equal(raw, expected)
