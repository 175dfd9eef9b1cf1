"""The attention kernel (runtime/kernels/attention.py) against the numpy attention of ops.py.

Tolerance: float32 throughout, sums in another order and exp to ~1 ulp (simd.exp_f32x16):
within 1e-5 of the largest |output|; measured errors are 2e-7 to 6e-7.
"""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime.kernels.attention import attention, cache_length
from lowbit.runtime.ops import attention as numpy_attention

CASES = [  # n_tokens, pos0, n_head, n_kv, head_dim, window
    (1, 0, 4, 1, 256, 0),       # the first token
    (1, 700, 9, 3, 64, 512),    # one generated token past a sliding window
    (7, 5, 9, 3, 64, 0),        # a few tokens after a prompt: one block of 4 and 3 single queries
    (33, 100, 4, 2, 32, 6),     # window narrower than the block of 4 queries
    (70, 10, 4, 1, 64, 30),
    (64, 0, 2, 2, 16, 0),       # head_dim of one vector; plain multi-head
]


@pytest.mark.parametrize("n_tokens, pos0, n_head, n_kv, hd, window", CASES)
def test_attention_matches_numpy(n_tokens, pos0, n_head, n_kv, hd, window, rng):
    n_keys = pos0 + n_tokens
    n_alloc = cache_length(n_keys + 3)
    k = rng.standard_normal((n_keys, n_kv, hd)).astype(np.float32)
    v = rng.standard_normal((n_keys, n_kv, hd)).astype(np.float32)
    q = rng.standard_normal((n_tokens, n_head, hd)).astype(np.float32) * 2
    # garbage past the last key: the kernel may read it into scores it never uses
    kt = np.full((n_kv, hd, n_alloc), 1e30, np.float32)
    kt[:, :, :n_keys] = k.transpose(1, 2, 0)
    vc = np.full((n_kv, n_alloc, hd), np.nan, np.float32)
    vc[:, :n_keys] = v.transpose(1, 0, 2)
    got = attention(q, kt, vc, pos0, 1 / np.sqrt(hd), window)
    want = numpy_attention(q, k, v, pos0, 1 / np.sqrt(hd), window)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_attention_checks_shapes():
    kt = np.zeros((1, 64, cache_length(8)), np.float32)
    v = np.zeros((1, cache_length(8), 64), np.float32)
    with pytest.raises(ValueError, match="holds"):
        attention(np.zeros((4, 2, 64), np.float32), kt, v, 14, 1.0, 0)
    with pytest.raises(ValueError, match="do not fit"):
        attention(np.zeros((1, 2, 32), np.float32), kt, v, 0, 1.0, 0)


def test_exp_is_within_an_ulp(rng):
    from numba import njit
    from lowbit.runtime.kernels.simd import exp_f32x16, load_f32x16, store_f32x16

    @njit
    def exp_all(x, y):
        for i in range(0, x.shape[0], 16):
            store_f32x16(y, i, exp_f32x16(load_f32x16(x, i)))

    x = np.linspace(-87, 88, 16 * 4096).astype(np.float32)
    y = np.empty_like(x)
    exp_all(x, y)
    ref = np.exp(x.astype(np.float64))
    assert (np.abs(y - ref) <= 2 * np.finfo(np.float32).eps * ref).all()
