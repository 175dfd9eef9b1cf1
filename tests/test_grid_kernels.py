"""The i-quant grid types' weight encodings (runtime/kernels/grids.py) and the lookups under them.

tests/test_kernels.py runs these types, like every type, through the kernels against
decode(W) @ x, decodes their resident layout against the exact decoder bit for bit and bounds
their resident bytes; here: the gathers, dword picks and byte selects against numpy in their
native AVX-512 and their scalar forms, the scalar-gather decoders against the native ones, and
the tables' offsets against the registry's.
"""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from lowbit.quant.types import all_types
from lowbit.runtime.kernels import QuantMatrix
from lowbit.runtime.kernels.grids import GRIDS, grid_code
from lowbit.runtime.kernels.layout import layout_of
from lowbit.runtime.kernels.simd import (gather_u32, gather_u32_generic, gather_u64, gather_u64_generic, load_bytes64,
                                         load_u8x16, load_u64, pick_i32x16, select_bytes, store_bytes64, sub_i8x64)

from synthetic import encode_rows

GRID_TYPES = [t for t in all_types() if t.packing is not None and t.packing.weights in GRIDS]


def test_the_seven_grid_types_use_their_grid_codes():
    assert sorted(t.name for t in GRID_TYPES) == sorted(["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                                                         "IQ1_S", "IQ1_M"])
    for t in GRID_TYPES:
        # the table's bytes are OFF + |grid|: the OFF the kernels take off must be the same
        assert t.packing.offset == GRIDS[t.packing.weights].offset, t.name


@njit
def _lookups(t32, t64, idx, out32, out64, native):
    for j in range(idx.shape[0] // 16):
        v = load_u8x16(idx, 16 * j)
        if native:
            r = gather_u32(t32, v)
            a = gather_u64(t64, v, 0)
            b = gather_u64(t64, v, 1)
        else:
            r = gather_u32_generic(t32, v)
            a = gather_u64_generic(t64, v, 0)
            b = gather_u64_generic(t64, v, 1)
        store_bytes64(out32, 64 * j, r)
        store_bytes64(out64, 128 * j, pick_i32x16(a, b, 0))
        store_bytes64(out64, 128 * j + 64, pick_i32x16(a, b, 1))


@pytest.mark.parametrize("native", [True, False], ids=["native", "generic"])
def test_gathers_and_picks(native, rng):
    t32 = rng.integers(0, 2 ** 32, 256, dtype=np.uint64).astype(np.uint32)
    t64 = rng.integers(0, 2 ** 63, 256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    idx = rng.integers(0, 256, 16 * 8).astype(np.uint8)
    idx[:2] = [0, 255]
    out32 = np.zeros(64 * 8, np.uint8)
    out64 = np.zeros(128 * 8, np.uint8)
    _lookups(t32, t64, idx, out32, out64, native)
    np.testing.assert_array_equal(out32.view(np.uint32), t32[idx])
    halves = t64[idx].view(np.uint32).reshape(8, 16, 2)      # per 16 indices: rows x (low, high)
    np.testing.assert_array_equal(out64.view(np.uint32).reshape(8, 2, 16), halves.transpose(0, 2, 1))


def test_select_bytes(rng):
    @njit
    def run(a, b, bits, out):
        store_bytes64(out, 0, select_bytes(load_u64(bits, 0), sub_i8x64(load_bytes64(a, 0), load_bytes64(b, 0)),
                                           load_bytes64(b, 0)))

    a = rng.integers(0, 256, 64).astype(np.uint8)
    b = rng.integers(0, 256, 64).astype(np.uint8)
    bits = rng.integers(0, 256, 8).astype(np.uint8)
    out = np.zeros(64, np.uint8)
    run(a, b, bits, out)
    take = np.unpackbits(bits, bitorder="little").astype(bool)
    np.testing.assert_array_equal(out, np.where(take, a - b, b))


def _decode_steps(code, block_bytes):
    """njit (q, out): every step of q through code's pair() (out [G, 16 n_cols], step after step)."""
    pair = code.pair

    @njit
    def run(q, out):
        for g in range(q.shape[0]):
            for b in range(q.shape[1] // block_bytes):
                for s in range(0, 64, 2):
                    w0, w1 = pair(q[g], b * block_bytes, 64, s)
                    store_bytes64(out[g], (b * 64 + s) * 64, w0)
                    store_bytes64(out[g], (b * 64 + s + 1) * 64, w1)
    return run


@pytest.mark.parametrize("qtype", GRID_TYPES, ids=[t.name for t in GRID_TYPES])
def test_scalar_lookups_decode_as_the_gathers_do(qtype, rng):
    rows = rng.standard_normal((19, 512)).astype(np.float32)
    rows[:, 5] *= 300.0
    m = QuantMatrix(encode_rows(rows, qtype).reshape(-1), qtype, 19, 512)
    q = m.packed()
    lay = layout_of(qtype)
    native = np.zeros((q.shape[0], 16 * 512), np.uint8)
    generic = np.zeros_like(native)
    _decode_steps(grid_code(qtype.packing.weights, True), lay.block_bytes)(q, native)
    _decode_steps(grid_code(qtype.packing.weights, False), lay.block_bytes)(q, generic)
    np.testing.assert_array_equal(generic, native)
