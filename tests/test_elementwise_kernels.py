"""The fused elementwise kernels (runtime/kernels/elementwise.py) against runtime/ops.py.

Tolerance: float32 arithmetic in another order (and exp to ~1 ulp): 1e-5 relative to the
largest |output|, or 2e-6 per element for the activations, on inputs from tiny to huge."""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime.kernels.attention import cache_length
from lowbit.runtime.kernels.elementwise import act_mul, qk_rope_store, residual_norm, rms_norm
from lowbit.runtime import ops


@pytest.mark.parametrize("kind", ["silu", "gelu"])
@pytest.mark.parametrize("n_tokens, n_ff", [(1, 1536), (19, 40)])
def test_act_mul_matches_numpy(kind, n_tokens, n_ff, rng):
    gu = (rng.standard_normal((n_tokens, 2 * n_ff)) * 4).astype(np.float32)
    gu[0, :8] = [-1e4, -300, -60, -20, 20, 60, 300, 1e4]     # far out on both sides
    got = act_mul(gu, n_ff, kind)
    with np.errstate(over="ignore"):
        want = ops.ACTIVATIONS[kind](gu[:, :n_ff].astype(np.float64)) * gu[:, n_ff:]
    assert np.isfinite(got).all()
    assert np.allclose(got, want, rtol=2e-6, atol=1e-7 * np.abs(want).max())


@pytest.mark.parametrize("post, norm", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("n_tokens", [1, 20])
def test_residual_norm_matches_numpy(post, norm, n_tokens, rng):
    n = 96
    x = (rng.standard_normal((n_tokens, n)) * 30).astype(np.float32)
    o = rng.standard_normal((n_tokens, n)).astype(np.float32)
    pw = rng.standard_normal(n).astype(np.float32) if post else None
    nw = rng.standard_normal(n).astype(np.float32) if norm else None
    want_x = x + (ops.rms_norm(o, pw, 1e-6) if post else o)
    want_h = ops.rms_norm(want_x, nw, 1e-6) if norm else None
    got_x = x.copy()
    got_h = residual_norm(got_x, o, pw, nw, 1e-6)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-5 * np.abs(want_x).max())
    if norm:
        np.testing.assert_allclose(got_h, want_h, rtol=1e-5, atol=1e-5 * np.abs(want_h).max())
    else:
        assert got_h is None
    np.testing.assert_allclose(rms_norm(x, nw if norm else np.ones(n, np.float32), 1e-6),
                               ops.rms_norm(x, nw if norm else np.ones(n, np.float32), 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("rope_dims", [64, 32])
def test_qk_rope_store_matches_numpy(neox, qk_norm, rope_dims, rng):
    n_tokens, n_head, n_kv, hd, pos0 = 5, 4, 2, 64, 3
    y = rng.standard_normal((n_tokens, (n_head + 2 * n_kv) * hd)).astype(np.float32)
    qn = rng.standard_normal(hd).astype(np.float32) if qk_norm else None
    kn = rng.standard_normal(hd).astype(np.float32) if qk_norm else None
    cos, sin = ops.rope_tables(np.arange(pos0, pos0 + n_tokens), rope_dims, 10000.0, 1.0)
    n_alloc = cache_length(16)
    kt = np.zeros((n_kv, hd, n_alloc), np.float32)
    vc = np.zeros((n_kv, n_alloc, hd), np.float32)
    q = qk_rope_store(y, n_head, n_kv, hd, qn, kn, 1e-6, cos, sin, neox, kt, vc, pos0)
    wq = y[:, :n_head * hd].reshape(n_tokens, n_head, hd)
    wk = y[:, n_head * hd:(n_head + n_kv) * hd].reshape(n_tokens, n_kv, hd)
    wv = y[:, (n_head + n_kv) * hd:].reshape(n_tokens, n_kv, hd)
    if qk_norm:
        wq = ops.rms_norm(wq, qn, 1e-6)
        wk = ops.rms_norm(wk, kn, 1e-6)
    wq = ops.apply_rope(wq.copy(), cos, sin, neox)
    wk = ops.apply_rope(wk.copy(), cos, sin, neox)
    np.testing.assert_allclose(q, wq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kt[:, :, pos0:pos0 + n_tokens], wk.transpose(1, 2, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(vc[:, pos0:pos0 + n_tokens], wv.transpose(1, 0, 2))
    assert not kt[:, :, :pos0].any() and not vc[:, pos0 + n_tokens:].any()
