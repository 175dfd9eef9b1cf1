"""Fused matvec/matmul kernels of every type against decode(W) @ x.

Tolerance: float32 accumulation in a different order than the float64 reference, so each output
must be within 1e-5 of sum_k |W_ik| |x_k| (the scale of a K-term dot's rounding error) -- about
100x looser than the 1e-7 to 2e-8 errors measured, and far tighter than any decode mistake.
"""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime.kernels import KernelError, QuantMatrix

from conftest import ALL_TYPES, QUANTIZED, type_params
from synthetic import encode_rows

RTOL = 1e-5


def assert_close_to_reference(got, w, x):
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    err = np.abs(got - ref)
    assert (err <= RTOL * scale + 1e-30).all(), f"worst relative error {(err / (scale + 1e-30)).max():.2e}"


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
    assert_close_to_reference(m.matvec(x), m.dequantize(), x)


@type_params()
@pytest.mark.parametrize("n_tokens", [1, 7, 33])
def test_matmul_matches_decode_then_matmul(qtype, n_tokens, rng):
    m = matrix_of(qtype, rng, n_rows=10)
    xs = rng.standard_normal((n_tokens, m.n_cols)).astype(np.float32)
    out = m.matmul(xs)
    assert out.shape == (n_tokens, 10)
    assert_close_to_reference(out, m.dequantize(), xs)


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


@type_params([t for t in ALL_TYPES if t.name in __import__("lowbit.runtime.kernels.specialized",
                                                                fromlist=["MATVEC"]).MATVEC])
def test_specialized_matvec_equals_generic(qtype, rng):
    from lowbit.runtime.kernels.fused import generic_matvec_kernel
    m = matrix_of(qtype, rng, n_rows=13, n_cols=640)
    x = rng.standard_normal(m.n_cols).astype(np.float32)
    generic = np.empty(m.n_rows, np.float32)
    generic_matvec_kernel(qtype)(m.rows, x, m._chunk, generic)
    np.testing.assert_allclose(m.matvec(x), generic, rtol=1e-5, atol=1e-5)
    assert_close_to_reference(m.matvec(x), m.dequantize(), x)
