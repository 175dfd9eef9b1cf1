"""The i-quant grid types at the file's bit count (runtime/kernels/grids.py).

The lookups (gathers, dword picks, byte selects) against numpy, in both their native AVX-512
and their scalar form; each type's in-register decoders against the exact decoder (bit-exact
with gguf-py): scale * (u - OFF) of every decoded step must equal its weights exactly; the
repacked bytes against the file's; the product kernel against decode(W) @ x~.
"""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from lowbit.quant.types import by_name
from lowbit.runtime.kernels import QuantMatrix
from lowbit.runtime.kernels import grids
from lowbit.runtime.kernels.packed import QuantizedActivations
from lowbit.runtime.kernels.simd import (gather_u32, gather_u32_generic, gather_u64, gather_u64_generic, load_bytes64,
                                         load_u8x16, load_u64, pick_i32x16, select_bytes, store_bytes64, store_f32x16,
                                         sub_i8x64)

from synthetic import encode_rows
from test_kernels import assert_close_to_reference

GRID_TYPES = list(grids.CODES)


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


def _decode_all(name, native):
    """njit (q, u, sc, by_step): every step and sub-block scale of q through the type's decoders,
    in packed.py's U8 layout (u [G, 16 n_cols], from pair(); by_step the same from step()) and
    per-sub-block scales (sc [G, n_sub * 16])."""
    code = grids.CODES[name]
    dec = grids.decoders(code, native)
    pair, step, scale = dec.pair, dec.step, dec.scale
    block_bytes, weight_bytes, n_sub = code.block_bytes, code.weight_bytes, code.n_sub

    @njit
    def run(q, u, sc, by_step):
        for g in range(q.shape[0]):
            for b in range(q.shape[1] // block_bytes):
                base = b * block_bytes
                for k in range(n_sub):
                    store_f32x16(sc[g], (b * n_sub + k) * 16, scale(q[g], base + weight_bytes, n_sub, k))
                for s in range(0, 64, 2):
                    w0, w1 = pair(q[g], base, 64, s)
                    at = (b * 256 + 4 * s) * 16
                    store_bytes64(u[g], at, w0)
                    store_bytes64(u[g], at + 64, w1)
                    store_bytes64(by_step[g], at, step(q[g], base, 64, s))
                    store_bytes64(by_step[g], at + 64, step(q[g], base, 64, s + 1))
    return run


def _grid_matrix(name, rng, n_rows=19, n_cols=512, kind="normal"):
    rows = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if kind == "outlier":
        rows[:, 5] *= 300.0
    qtype = by_name(name)
    return QuantMatrix(encode_rows(rows, qtype).reshape(-1), qtype, n_rows, n_cols)


@pytest.mark.parametrize("native", [True, False], ids=["native", "generic"])
@pytest.mark.parametrize("name", GRID_TYPES)
def test_decoded_steps_equal_the_exact_decoder(name, native, rng):
    m = _grid_matrix(name, rng, kind="outlier")
    layout = grids.CODES[name]
    q = grids.repack_grid(m.rows, name, m.n_rows, m.n_cols)
    groups = q.shape[0]
    u = np.zeros((groups, 16 * m.n_cols), np.uint8)
    sc = np.zeros((groups, m.n_cols // layout.sub * 16), np.float32)
    by_step = np.zeros_like(u)
    _decode_all(name, native)(q, u, sc, by_step)
    np.testing.assert_array_equal(by_step, u)
    u = u.reshape(groups, m.n_cols // 4, 16, 4).transpose(0, 2, 1, 3).reshape(groups * 16, m.n_cols)
    sc = np.repeat(sc.reshape(groups, -1, 16).transpose(0, 2, 1).reshape(groups * 16, -1), layout.sub, axis=1)
    w = sc * (u.astype(np.float32) - np.float32(layout.offset))
    np.testing.assert_array_equal(w[:m.n_rows], m.dequantize())
    assert (sc[m.n_rows:] == 0).all()     # padding rows: zero scales, so they add nothing


@pytest.mark.parametrize("name", GRID_TYPES)
def test_repacked_bytes_are_the_files_within_ten_percent(name, rng):
    m = _grid_matrix(name, rng, n_rows=32, n_cols=256)
    q = grids.repack_grid(m.rows, name, m.n_rows, m.n_cols)
    assert q.nbytes <= 1.10 * m.rows.nbytes


@pytest.mark.parametrize("planes", [1, 3])
@pytest.mark.parametrize("name", GRID_TYPES)
def test_grid_kernel_matches_decode_then_dot(name, planes, rng):
    m = _grid_matrix(name, rng)
    q = grids.repack_grid(m.rows, name, m.n_rows, m.n_cols)
    offsets = np.full(q.shape[0] * 16, grids.CODES[name].offset, np.float32)
    kernel = grids.grid_kernel(name, planes)
    w = m.dequantize()
    for n_tokens in (1, 3, 6):    # in-register decoding, and the decoded tile for 4 tokens at a time
        xs = rng.standard_normal((n_tokens, m.n_cols)).astype(np.float32)
        qa = QuantizedActivations(xs, planes)
        out = np.zeros((n_tokens, m.n_rows), np.float32)
        kernel(q, q, q, offsets, qa.qx, qa.dx, qa.isum, n_tokens, m.n_rows, out.reshape(-1))
        assert_close_to_reference(out, w, qa.dequantize())
