"""Fused matvec/matmul kernels of every type against decode(W) @ x.

Float types (F32, F16, BF16) run float kernels: float32 accumulation in a different order than
the float64 reference, so each output must be within 1e-5 of sum_k |W_ik| |x_k| (the scale of
a K-term dot's rounding error) -- about 100x looser than the 1e-7 to 2e-8 errors measured, and
far tighter than any decode mistake.

Quantized types run integer kernels on activations quantized to int8 blocks of 32
(x~ = dx * qx, dx = max|x| / 127 per block). Two statements, both checked:
  * exact arithmetic on x~: the output is decode(W) @ x~ within the same 1e-5 of
    sum |W| |x~| (the integer sums are exact; only the per-sub-block float products round);
  * against the float activations, the error is the quantization error and nothing more:
    |out - decode(W) @ x| <= sum_k |W_ik| |x_k - x~_k|  (+ the 1e-5 rounding term),
    where |x_k - x~_k| <= dx / 2, i.e. at most 1/254 of the block's largest |x|. On random
    rows this is about 1e-3 of sum |W| |x|; a decode mistake is of order 1.
"""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime.kernels import KernelError, QuantMatrix
from lowbit.runtime.kernels.layout import GROUP, layout_of
from lowbit.runtime.kernels.packed import QuantizedActivations, expander

from conftest import ALL_TYPES, QUANTIZED, type_params
from synthetic import encode_rows

RTOL = 1e-5


def assert_close_to_reference(got, w, x):
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    err = np.abs(got - ref)
    assert (err <= RTOL * scale + 1e-30).all(), f"worst relative error {(err / (scale + 1e-30)).max():.2e}"


def assert_kernel_result(got, m, xs):
    """The right check for m's kernel (see the module docstring); xs is (T, K) or (K,)."""
    w = m.dequantize()
    if not m.integer:
        assert_close_to_reference(got, w, xs)
        return
    xs2 = np.atleast_2d(xs)
    xt = m.quantize(xs2).dequantize()
    got2 = np.atleast_2d(got)
    assert_close_to_reference(got2, w, xt)
    ref = xs2.astype(np.float64) @ w.T.astype(np.float64)
    bound = np.abs(xs2 - xt).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    scale = np.abs(xs2).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    err = np.abs(got2 - ref)
    assert (err <= bound * (1 + 1e-6) + RTOL * scale + 1e-30).all()


def matrix_of(qtype, rng, n_rows=9, n_cols=512, kind="normal"):
    rows = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if kind == "outlier":
        rows[:, 5] *= 300.0
    if kind == "zeros":
        rows[:] = 0
    raw = encode_rows(rows, qtype)
    return QuantMatrix(raw.reshape(-1), qtype, n_rows, n_cols)


@type_params()
@pytest.mark.parametrize("kind", ["normal", "outlier", "zeros"])
def test_matvec_matches_decode_then_dot(qtype, kind, rng):
    m = matrix_of(qtype, rng, kind=kind)  # 9 rows: not a multiple of the 4-row grain
    x = rng.standard_normal(m.n_cols).astype(np.float32)
    assert_kernel_result(m.matvec(x), m, x)


@type_params()
@pytest.mark.parametrize("n_tokens", [1, 7, 33])
def test_matmul_matches_decode_then_matmul(qtype, n_tokens, rng):
    m = matrix_of(qtype, rng, n_rows=10)
    xs = rng.standard_normal((n_tokens, m.n_cols)).astype(np.float32)
    out = m.matmul(xs)
    assert out.shape == (n_tokens, 10)
    assert_kernel_result(out, m, xs)


@type_params(QUANTIZED[:3] + [t for t in ALL_TYPES if t.name in ("F32", "Q4_K", "IQ2_XXS")])
def test_matmul_row_equals_matvec(qtype, rng):
    m = matrix_of(qtype, rng)
    xs = rng.standard_normal((3, m.n_cols)).astype(np.float32)
    np.testing.assert_allclose(m.matmul(xs)[1], m.matvec(xs[1]), rtol=1e-5, atol=1e-5)


def test_activation_shape_is_checked(rng):
    m = matrix_of(QUANTIZED[0], rng)
    with pytest.raises(KernelError, match=r"takes activations of shape \(512,\), got \(511,\)"):
        m.matvec(np.zeros(511, np.float32))
    with pytest.raises(KernelError, match=r"shape \(T, 512\)"):
        m.matmul(np.zeros(512, np.float32))


def test_activations_of_other_dtypes_are_converted(rng):
    m = matrix_of(QUANTIZED[0], rng)
    x = rng.standard_normal(m.n_cols)
    np.testing.assert_allclose(m.matvec(x), m.matvec(x.astype(np.float32)), rtol=0, atol=0)


@type_params(QUANTIZED)
def test_bad_weight_buffers_are_refused_before_any_kernel_runs(qtype):
    with pytest.raises(ValueError, match="not a whole number of"):
        QuantMatrix(np.zeros(4096, np.uint8), qtype, 2, qtype.block_size + 1)
    with pytest.raises(ValueError, match="needs"):
        QuantMatrix(np.zeros(qtype.type_size * 3, np.uint8), qtype, 2, 2 * qtype.block_size)


def test_every_k_and_i_quant_runs_the_integer_kernel():
    for t in QUANTIZED:
        if t.family in ("k", "iq1", "iq2", "iq3", "iq4", "legacy", "ternary", "mx"):
            assert layout_of(t) is not None, t.name


@type_params(QUANTIZED)
def test_repacked_layout_decodes_to_the_exact_weights(qtype, rng):
    # scale * value - min, decoded from the resident layout by the kernels' own step and scale
    # decoders, equals the exact decoder's weights bit for bit
    m = matrix_of(qtype, rng, n_rows=19)
    q = m.packed()
    lay = m.layout
    groups = q.shape[0]
    assert q.nbytes == lay.packed_bytes(m.n_rows, m.n_cols)
    n_subs = m.n_cols // lay.sub
    tile = np.zeros((groups, GROUP * m.n_cols), np.uint8)
    sct = np.zeros((groups, GROUP * n_subs), np.float32)
    mnt = np.zeros((groups, GROUP * n_subs), np.float32)
    expander(lay)(q, tile, sct, mnt)
    u = tile.reshape(groups, m.n_cols // 4, GROUP, 4).transpose(0, 2, 1, 3).reshape(groups * GROUP, m.n_cols)
    per_sub = lambda a: np.repeat(a.reshape(groups, -1, GROUP).transpose(0, 2, 1).reshape(groups * GROUP, -1),
                                  lay.sub, axis=1)
    sc = per_sub(sct)
    mins = per_sub(mnt) if lay.affine else sc * np.float32(lay.offset)
    w = (sc * u.astype(np.float32) - mins)[:m.n_rows]
    np.testing.assert_array_equal(w, m.dequantize())


# Types still held above their file's bits: TQ1_0's base-3 packing is unpacked to whole codes
# per weight until its in-register decoder exists (strict: an xpass fails, so the list shrinks
# as they land).
ABOVE_FILE_SIZE = {"TQ1_0"}


@pytest.mark.parametrize("qtype", [
    pytest.param(t, id=t.name, marks=[pytest.mark.xfail(strict=True, reason="held as whole codes")]
                 if t.name in ABOVE_FILE_SIZE else []) for t in QUANTIZED])
def test_resident_weights_are_at_most_110_percent_of_the_file(qtype):
    # Qwen2.5-1.5B's shapes: whole groups of 16 rows, so no padding counts
    for n_rows, n_cols in ((1536, 1536), (256, 1536), (8960, 1536), (1536, 8960)):
        if n_cols % qtype.block_size:
            continue
        resident = layout_of(qtype).packed_bytes(n_rows, n_cols)
        assert resident <= 1.10 * qtype.row_bytes(n_cols) * n_rows, (n_rows, n_cols, resident)


@pytest.mark.parametrize("planes", [1, 2, 3])
def test_activation_quantization(planes, rng):
    x = rng.standard_normal((5, 256)).astype(np.float32)
    x[1, :32] = 0
    x[2, 40] = 1e4
    qa = QuantizedActivations(x, planes)
    blocks = x.reshape(5, -1, 32)
    d = np.abs(blocks).max(axis=2) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(blocks * inv[..., None]).astype(np.int8)
    # the first plane is ggml's Q8_0 of the activations, byte for byte
    np.testing.assert_array_equal(qa.qx[0], q.reshape(-1))
    np.testing.assert_array_equal(qa.dx, d.reshape(-1))
    sums = lambda p: qa.qx[p].reshape(5, -1, 16).astype(np.int64).sum(axis=2).reshape(-1)
    np.testing.assert_array_equal(qa.isum[0], sums(0))
    if planes > 1:
        lo = 254 * sums(1) + (sums(2) if planes > 2 else 0)
        np.testing.assert_array_equal(qa.isum[1], lo)
    # each plane takes the error down 254 times: at most d / 2 / 254^(P-1), plus float rounding
    err = np.abs(qa.dequantize() - x)
    bound = d.repeat(32, axis=1).astype(np.float64) / 2 / 254.0 ** (planes - 1)
    assert (err <= bound * 1.01 + 1e-7 * np.abs(x)).all()


def test_byte_dot_product_generic_equals_vnni(rng):
    from numba import njit
    from lowbit.runtime.kernels.simd import (dot_u8s8, dot_u8s8_generic, load_bytes64, store_f32x16,
                                             to_f32x16, zeros_i32x16)

    @njit
    def both(a, b, out):
        x = dot_u8s8(zeros_i32x16(), load_bytes64(a, 0), load_bytes64(b, 0))
        y = dot_u8s8_generic(zeros_i32x16(), load_bytes64(a, 0), load_bytes64(b, 0))
        store_f32x16(out, 0, to_f32x16(x))
        store_f32x16(out, 16, to_f32x16(y))

    a = rng.integers(0, 256, 64).astype(np.uint8)
    b = rng.integers(-128, 128, 64).astype(np.int8)
    a[:4] = 255
    b[:4] = -128
    out = np.empty(32, np.float32)
    both(a, b, out)
    want = (a.astype(np.int64) * b.astype(np.int64)).reshape(16, 4).sum(axis=1)
    np.testing.assert_array_equal(out[:16], want)
    np.testing.assert_array_equal(out[16:], want)


def test_quantized_activations_are_checked(rng):
    m = matrix_of(QUANTIZED[0], rng)
    qa = QuantizedActivations(np.zeros((2, 256), np.float32))
    with pytest.raises(KernelError, match=r"shape \(T, 512\)"):
        m.matmul_quantized(qa)
    with pytest.raises(KernelError, match="output must be"):
        m.matmul_quantized(m.quantize(np.zeros((2, 512), np.float32)), np.empty((2, 8), np.float32))


def test_table_lookup_generic_equals_native(rng):
    from numba import njit
    from lowbit.runtime.kernels.simd import load_bytes64, lookup16, lookup16_generic, store_bytes64

    @njit
    def both(table, idx, out):
        store_bytes64(out, 0, lookup16(load_bytes64(table, 0), load_bytes64(idx, 0)))
        store_bytes64(out, 64, lookup16_generic(load_bytes64(table, 0), load_bytes64(idx, 0)))

    table = np.tile(rng.integers(0, 256, 16).astype(np.uint8), 4)
    idx = rng.integers(0, 16, 64).astype(np.uint8)
    out = np.empty(128, np.uint8)
    both(table, idx, out)
    np.testing.assert_array_equal(out[:64], table[idx])
    np.testing.assert_array_equal(out[64:], table[idx])
