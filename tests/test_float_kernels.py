"""The float kernels (runtime/kernels/floats.py) for every float type of the registry.

Each product is float32 activations times the exactly widened weights, summed in float32, so:
  * with one-hot activations the output is the decoded column itself, bit for bit (the widening
    is exact: gguf-py's decoder is the oracle);
  * otherwise each output is within 1e-5 of sum_k |W_ik| |x_k| of the float64 product (the scale
    of a K-term float32 sum's rounding);
  * the result does not depend on the number of threads.
Shapes cross every blocking boundary: rows around the 12-row register block and the tasks, row
lengths that are not whole 16-column steps or 256-column chunks, token counts around the 16-
and 32-token panels.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

from lowbit.runtime.kernels import QuantMatrix
from lowbit.runtime.kernels import floats

from conftest import ALL_TYPES, type_params
from synthetic import encode_rows, reference_decode

FLOAT_TYPES = [t for t in ALL_TYPES if floats.weight_format(t) is not None]
RTOL = 1e-5


def test_every_float_type_of_the_registry_has_a_float_kernel():
    assert sorted(t.name for t in ALL_TYPES if t.is_float) == sorted(t.name for t in FLOAT_TYPES)


def float_matrix(qtype, rng, n_rows, n_cols, special=False):
    rows = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if special:
        # values at the edges of the formats: float16 subnormals and extremes, exact zeros,
        # negative zero, bfloat16's and float32's tiny normals
        edge = np.array([6e-8, -3e-5, 65504.0, -0.0, 0.0, 1e-38, -2.5e-30, 3e38 if qtype.name != "F16" else 6e4],
                        np.float32)
        rows[:, :len(edge)] = edge
    raw = encode_rows(rows, qtype)
    m = QuantMatrix(raw.reshape(-1), qtype, n_rows, n_cols)
    return m, reference_decode(raw.reshape(-1), qtype).reshape(n_rows, n_cols).astype(np.float32)


def assert_close(got, w, xs):
    ref = xs.astype(np.float64) @ w.T.astype(np.float64)
    scale = np.abs(xs).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    err = np.abs(got - ref)
    assert (err <= RTOL * scale + 1e-30).all(), f"worst relative error {(err / (scale + 1e-30)).max():.2e}"


@type_params(FLOAT_TYPES)
@pytest.mark.parametrize("n_rows, n_cols", [(13, 16), (25, 100), (48, 256), (50, 300), (97, 1040)])
def test_matvec_against_decode_then_dot(qtype, n_rows, n_cols, rng):
    m, w = float_matrix(qtype, rng, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    assert_close(m.matvec(x), w, x[None, :])


@type_params(FLOAT_TYPES)
@pytest.mark.parametrize("n_tokens", [2, 15, 16, 17, 32, 33, 70])
@pytest.mark.parametrize("n_rows, n_cols", [(13, 16), (50, 300), (110, 520)])
def test_matmul_against_decode_then_matmul(qtype, n_tokens, n_rows, n_cols, rng):
    m, w = float_matrix(qtype, rng, n_rows, n_cols)
    xs = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = m.matmul(xs)
    assert out.shape == (n_tokens, n_rows)
    assert_close(out, w, xs)


@type_params(FLOAT_TYPES)
@pytest.mark.parametrize("n_cols", [32, 300])
def test_one_hot_activations_give_the_decoded_weights_exactly(qtype, n_cols, rng):
    m, w = float_matrix(qtype, rng, 30, n_cols, special=True)
    eye = np.eye(n_cols, dtype=np.float32)
    np.testing.assert_array_equal(m.matmul(eye[:40]), w[:, :40].T)
    for k in (0, 3, 6, n_cols - 1):
        np.testing.assert_array_equal(m.matvec(eye[k]), w[:, k])


@type_params(FLOAT_TYPES)
def test_results_do_not_depend_on_the_thread_count(qtype, rng):
    m, _ = float_matrix(qtype, rng, 200, 528)
    xs = rng.standard_normal((37, 528)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = m.matmul(xs), m.matvec(xs[0])
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = m.matmul(xs), m.matvec(xs[0])
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])


@type_params(FLOAT_TYPES)
def test_weights_are_read_in_place(qtype, rng):
    m, _ = float_matrix(qtype, rng, 20, 64)
    assert np.shares_memory(m._weights, m.rows)
    assert m.packed_bytes == 0


def test_rows_shorter_than_a_vector_use_the_generic_kernels(rng):
    f16 = next(t for t in FLOAT_TYPES if t.name == "F16")
    m, w = float_matrix(f16, rng, 5, 8)
    assert m._weights is None
    xs = rng.standard_normal((3, 8)).astype(np.float32)
    assert_close(m.matmul(xs), w, xs)
    assert_close(m.matvec(xs[0]), w, xs[:1])


def test_half_widening_without_f16c_equals_the_hardware_one():
    # every one of the 65536 halves, through both paths; numpy (gguf-py's decoder) is the oracle
    from numba import njit
    from lowbit.runtime.kernels.simd import load_f16x16, load_f16x16_generic, store_f32x16

    @njit
    def widen_all(h, fast, generic):
        for i in range(0, h.shape[0], 16):
            store_f32x16(fast, i, load_f16x16(h, i))
            store_f32x16(generic, i, load_f16x16_generic(h, i))

    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    fast, generic = np.empty(65536, np.float32), np.empty(65536, np.float32)
    widen_all(h, fast, generic)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(generic.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    np.testing.assert_array_equal(fast.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(generic[nan]).all() and np.isnan(fast[nan]).all()


def test_the_float_kernels_compile_and_agree_for_a_cpu_without_avx512(tmp_path):
    # numba compiling for plain x86-64 (no AVX, FMA or F16C): LLVM lowers the 16-lane vectors
    # to SSE and the half widening takes the integer path (a hardware conversion would need a
    # runtime function numba's JIT lacks, and abort)
    import os
    import subprocess
    import sys
    code = """
import numpy as np
from lowbit.runtime.kernels import floats
rng = np.random.default_rng(0)
w = (rng.standard_normal((30, 100)) / 10).astype(np.float16)
xs = rng.standard_normal((20, 100)).astype(np.float32)
out, one = np.empty((20, 30), np.float32), np.empty(30, np.float32)
floats.matmul(w.view(np.uint16), floats.F16, xs, out)
floats.matvec(w.view(np.uint16), floats.F16, xs[0], one)
ref = xs.astype(np.float64) @ w.astype(np.float64).T
print(np.abs(out - ref).max() / np.abs(ref).max(), np.abs(one - ref[0]).max() / np.abs(ref).max())
"""
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", LOWBIT_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [float(v) for v in done.stdout.split()]
    assert max(errors) < 1e-6
