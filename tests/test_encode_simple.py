"""Encoders of the simpler types: floats (bit-exact), legacy and IQ4.

The generic checks (error vs libgguf on random rows, zeros, outliers, bad input) are in
test_encoders.py; here: exactness of the float casts, and for the quantized types that an
encoding decodes to what its search assumed and beats ggml's reference on structured rows.
"""
from __future__ import annotations

import gguf.quants as gq
import libgguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType
from numba import njit

from lowbit.quant.encode import NO_IMPORTANCE, quantize
from lowbit.quant.formats.iq4 import nearest_nl
from lowbit.quant.tables import IQ4NL_VALUES
from lowbit.quant.types import by_name

from conftest import real_looking_rows
from synthetic import reference_decode


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


# --- legacy (Q4_0, Q4_1, Q5_0, Q5_1) and IQ4 (IQ4_NL, IQ4_XS) ---------------------------------

SCALED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]


def f16_at(raw, o):
    return raw[..., o:o + 2].copy().view(np.float16).astype(np.float32)[..., 0]


def block_grids(raw_row, name):
    """Per group of 32 weights, the values its stored scale (and min) offer, as the decoder
    computes them in f32: shape (groups, codes)."""
    qtype = by_name(name)
    blocks = raw_row.reshape(-1, qtype.type_size)
    d = f16_at(blocks, 0)
    if name.startswith("Q"):
        bits, affine = int(name[1]), name.endswith("_1")
        k = np.arange(1 << bits, dtype=np.float32)
        if affine:
            return d[:, None] * k[None, :] + f16_at(blocks, 2)[:, None]
        return d[:, None] * (k - np.float32(1 << (bits - 1)))[None, :]
    if name == "IQ4_NL":
        return d[:, None] * IQ4NL_VALUES[None, :]
    scales_h = blocks[:, 2].astype(np.int32) | (blocks[:, 3].astype(np.int32) << 8)
    groups = []
    for ib in range(8):
        lo = (blocks[:, 4 + ib // 2] >> (4 * (ib % 2))) & 15
        s = lo.astype(np.int32) | (((scales_h >> (2 * ib)) & 3) << 4)
        groups.append(d * (s - 32).astype(np.float32))
    dl = np.stack(groups, axis=1).reshape(-1)
    return dl[:, None] * IQ4NL_VALUES[None, :]


@pytest.mark.parametrize("name", SCALED)
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_every_weight_takes_the_nearest_value_of_its_group(name, with_imatrix, rng):
    # The decoded value is one the group's stored scale offers (the packing is right) and the
    # nearest of them to the weight (the quants are optimal for the scale the search stored).
    rows, imp = real_looking_rows(rng, 4, 512)
    qtype = by_name(name)
    raw = quantize(rows, qtype, imp if with_imatrix else None)
    decoded = reference_decode(raw, qtype).reshape(rows.shape)
    for r in range(rows.shape[0]):
        grid = block_grids(raw[r], name)
        x = rows[r].reshape(-1, 32)
        y = decoded[r].reshape(-1, 32)
        assert (np.abs(grid[:, None, :] - y[:, :, None]).min(axis=2) == 0).all()
        nearest = np.abs(grid[:, None, :] - x[:, :, None]).min(axis=2)
        assert (np.abs(x - y) <= nearest * (1 + 1e-6) + 1e-12).all()


@njit
def _nearest_all(v):
    out = np.empty(v.size, np.int64)
    for i in range(v.size):
        out[i] = nearest_nl(v[i])
    return out


def test_iq4_nearest_index_is_the_brute_force_one(rng):
    mids = (IQ4NL_VALUES[:-1] + IQ4NL_VALUES[1:]) / 2
    v = np.concatenate([rng.uniform(-300, 300, 100_000), mids, IQ4NL_VALUES,
                        mids + 1e-3, mids - 1e-3]).astype(np.float32)
    brute = np.abs(v[:, None].astype(np.float64) - IQ4NL_VALUES[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(_nearest_all(v), brute)


@pytest.mark.parametrize("name", SCALED)
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_beats_ggml_on_real_looking_rows(name, with_imatrix, rng):
    rows, imp = real_looking_rows(rng, 16, 1024)
    imp = imp if with_imatrix else None
    qtype = by_name(name)
    ours = reference_decode(quantize(rows, qtype, imp), qtype).reshape(rows.shape)
    ref = reference_decode(np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imp), np.uint8),
                           qtype).reshape(rows.shape)
    weight = imp if imp is not None else 1.0
    assert (np.square(rows - ours) * weight).sum() < (np.square(rows - ref) * weight).sum()
