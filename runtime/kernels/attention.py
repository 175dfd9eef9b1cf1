"""Causal grouped-query attention over the KV cache, in one njit call per layer.

The cache keeps, per layer, keys transposed and values as rows (KVCache in runtime/model.py):

    kt  float32 [n_kv, head_dim, n_alloc]   key j of head h: kt[h, :, j]
    v   float32 [n_kv, n_alloc, head_dim]   value j of head h: v[h, j, :]

so that the scores of 16 consecutive keys are one vector: for each dimension d, a broadcast of
q[d] times kt[h, d, j:j+16], accumulated (four such vectors at a time, so that the additions
do not wait on each other). n_alloc is n_ctx rounded up to 16 plus 16, so a vector that starts
at the last key reads padding, never past the array; scores past the last key are not used.

One task per (query, head): the query at position p sees keys max(0, p - window + 1) .. p
(window 0: all of 0 .. p). Softmax with the maximum subtracted, exp evaluated 16 lanes at a
time (simd.exp_f32x16, ~1 ulp), then the weighted sum of value rows, head_dim/16 vectors.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from lowbit.quant.jit_cache import cached_kernel

from .simd import (add_f32x16, exp_f32x16, fma_f32x16, load1, load_f32x16, mul_f32x16,
                   reduce_add_f32x16, splat_f32, store_f32x16, zeros_f32x16)

LANES = 16


def cache_length(n_ctx: int) -> int:
    """Keys allocated for a context of n_ctx: rounded up to 16, plus one vector of padding."""
    return -(-n_ctx // LANES) * LANES + LANES


@njit(inline="always")
def _one_head(q, kt, v, out, i, h, n_head, hd, group, n_alloc, pos0, scale, window, s):
    kvh = h // group
    p = pos0 + i
    lo = max(0, p - window + 1) if window > 0 else 0
    n = p + 1 - lo
    chunks = (n + LANES - 1) // LANES
    qb = (i * n_head + h) * hd
    kb = kvh * hd * n_alloc
    # scores, 64 keys at a time, then the remaining chunks of 16
    c = 0
    while c + 4 <= chunks:
        j = lo + c * LANES
        a0 = zeros_f32x16()
        a1 = zeros_f32x16()
        a2 = zeros_f32x16()
        a3 = zeros_f32x16()
        for d in range(hd):
            qd = splat_f32(q[qb + d])
            at = kb + d * n_alloc + j
            a0 = fma_f32x16(qd, load_f32x16(kt, at), a0)
            a1 = fma_f32x16(qd, load_f32x16(kt, at + LANES), a1)
            a2 = fma_f32x16(qd, load_f32x16(kt, at + 2 * LANES), a2)
            a3 = fma_f32x16(qd, load_f32x16(kt, at + 3 * LANES), a3)
        sc = splat_f32(scale)
        store_f32x16(s, c * LANES, mul_f32x16(a0, sc))
        store_f32x16(s, (c + 1) * LANES, mul_f32x16(a1, sc))
        store_f32x16(s, (c + 2) * LANES, mul_f32x16(a2, sc))
        store_f32x16(s, (c + 3) * LANES, mul_f32x16(a3, sc))
        c += 4
    while c < chunks:
        j = lo + c * LANES
        a0 = zeros_f32x16()
        for d in range(hd):
            a0 = fma_f32x16(splat_f32(q[qb + d]), load_f32x16(kt, kb + d * n_alloc + j), a0)
        store_f32x16(s, c * LANES, mul_f32x16(a0, splat_f32(scale)))
        c += 1
    # softmax over the n valid scores (the tail of the last chunk is set to 0 after exp)
    m = s[0]
    for jj in range(1, n):
        m = max(m, s[jj])
    total = zeros_f32x16()
    mv = splat_f32(m)
    for c in range(chunks):
        e = exp_f32x16(add_f32x16(load_f32x16(s, c * LANES), mul_f32x16(mv, splat_f32(np.float32(-1.0)))))
        store_f32x16(s, c * LANES, e)
    for jj in range(n, chunks * LANES):
        s[jj] = 0.0
    for c in range(chunks):
        total = add_f32x16(total, load_f32x16(s, c * LANES))
    inv = np.float32(1.0) / reduce_add_f32x16(total)
    # weighted sum of the value rows, four keys at a time per 16 dimensions
    vb = (kvh * n_alloc + lo) * hd
    ob = i * n_head * hd + h * hd
    for cd in range(0, hd, LANES):
        b0 = zeros_f32x16()
        b1 = zeros_f32x16()
        b2 = zeros_f32x16()
        b3 = zeros_f32x16()
        jj = 0
        while jj + 4 <= n:
            at = vb + jj * hd + cd
            b0 = fma_f32x16(splat_f32(s[jj]), load_f32x16(v, at), b0)
            b1 = fma_f32x16(splat_f32(s[jj + 1]), load_f32x16(v, at + hd), b1)
            b2 = fma_f32x16(splat_f32(s[jj + 2]), load_f32x16(v, at + 2 * hd), b2)
            b3 = fma_f32x16(splat_f32(s[jj + 3]), load_f32x16(v, at + 3 * hd), b3)
            jj += 4
        while jj < n:
            b0 = fma_f32x16(splat_f32(s[jj]), load_f32x16(v, vb + jj * hd + cd), b0)
            jj += 1
        acc = add_f32x16(add_f32x16(b0, b1), add_f32x16(b2, b3))
        store_f32x16(out, ob + cd, mul_f32x16(acc, splat_f32(inv)))


@njit(inline="always")
def _softmax_row(s, at, first, last, width):
    """Softmax in place of s[at + first .. at + last] (inclusive); every other entry of the row
    s[at .. at + width) is set to 0. width is a multiple of 16."""
    m = s[at + first]
    for jj in range(first + 1, last + 1):
        m = max(m, s[at + jj])
    neg_m = splat_f32(-m)
    total = zeros_f32x16()
    for c in range(0, width, LANES):
        e = exp_f32x16(add_f32x16(load_f32x16(s, at + c), neg_m))
        store_f32x16(s, at + c, e)
    for jj in range(first):
        s[at + jj] = 0.0
    for jj in range(last + 1, width):
        s[at + jj] = 0.0
    for c in range(0, width, LANES):
        total = add_f32x16(total, load_f32x16(s, at + c))
    inv = np.float32(1.0) / reduce_add_f32x16(total)
    iv = splat_f32(inv)
    for c in range(0, width, LANES):
        store_f32x16(s, at + c, mul_f32x16(load_f32x16(s, at + c), iv))


@njit(inline="always")
def _four_queries(q, kt, v, out, i0, h, n_head, hd, group, n_alloc, pos0, scale, window, s):
    """Queries i0 .. i0 + 3 of head h together: each key vector and value row is loaded once
    for the four."""
    kvh = h // group
    p0 = pos0 + i0
    lo = max(0, p0 - window + 1) if window > 0 else 0     # the first query's first key
    n = p0 + 3 + 1 - lo                                     # keys lo .. the last query's position
    width = (n + LANES - 1) // LANES * LANES
    kb = kvh * hd * n_alloc
    q0 = (i0 * n_head + h) * hd
    qs = n_head * hd                                        # from one query to the next
    sc = splat_f32(scale)
    for c in range(0, width, 2 * LANES):
        two = c + LANES < width
        j = lo + c
        a00 = zeros_f32x16()
        a01 = zeros_f32x16()
        a10 = zeros_f32x16()
        a11 = zeros_f32x16()
        a20 = zeros_f32x16()
        a21 = zeros_f32x16()
        a30 = zeros_f32x16()
        a31 = zeros_f32x16()
        for d in range(hd):
            at = kb + d * n_alloc + j
            k0 = load_f32x16(kt, at)
            k1 = load_f32x16(kt, at + LANES) if two else k0
            x0 = splat_f32(load1(q, q0 + d))
            x1 = splat_f32(load1(q, q0 + qs + d))
            x2 = splat_f32(load1(q, q0 + 2 * qs + d))
            x3 = splat_f32(load1(q, q0 + 3 * qs + d))
            a00 = fma_f32x16(x0, k0, a00)
            a01 = fma_f32x16(x0, k1, a01)
            a10 = fma_f32x16(x1, k0, a10)
            a11 = fma_f32x16(x1, k1, a11)
            a20 = fma_f32x16(x2, k0, a20)
            a21 = fma_f32x16(x2, k1, a21)
            a30 = fma_f32x16(x3, k0, a30)
            a31 = fma_f32x16(x3, k1, a31)
        store_f32x16(s, c, mul_f32x16(a00, sc))
        store_f32x16(s, width + c, mul_f32x16(a10, sc))
        store_f32x16(s, 2 * width + c, mul_f32x16(a20, sc))
        store_f32x16(s, 3 * width + c, mul_f32x16(a30, sc))
        if two:
            store_f32x16(s, c + LANES, mul_f32x16(a01, sc))
            store_f32x16(s, width + c + LANES, mul_f32x16(a11, sc))
            store_f32x16(s, 2 * width + c + LANES, mul_f32x16(a21, sc))
            store_f32x16(s, 3 * width + c + LANES, mul_f32x16(a31, sc))
    for r in range(4):
        p = p0 + r
        first = (max(0, p - window + 1) if window > 0 else 0) - lo
        _softmax_row(s, r * width, first, p - lo, width)
    vb = (kvh * n_alloc + lo) * hd
    for cd in range(0, hd, LANES):
        b0 = zeros_f32x16()
        b1 = zeros_f32x16()
        b2 = zeros_f32x16()
        b3 = zeros_f32x16()
        for jj in range(n):
            vv = load_f32x16(v, vb + jj * hd + cd)
            b0 = fma_f32x16(splat_f32(load1(s, jj)), vv, b0)
            b1 = fma_f32x16(splat_f32(load1(s, width + jj)), vv, b1)
            b2 = fma_f32x16(splat_f32(load1(s, 2 * width + jj)), vv, b2)
            b3 = fma_f32x16(splat_f32(load1(s, 3 * width + jj)), vv, b3)
        store_f32x16(out, q0 + cd, b0)
        store_f32x16(out, q0 + qs + cd, b1)
        store_f32x16(out, q0 + 2 * qs + cd, b2)
        store_f32x16(out, q0 + 3 * qs + cd, b3)


@lru_cache(maxsize=None)
def attention_kernel(parallel: bool):
    @cached_kernel(parallel=parallel, fastmath=True)
    def attend(q, kt, v, n_tokens, n_head, hd, n_kv, n_alloc, pos0, scale, window, out):
        """q flat (T * n_head * hd), kt / v flat (one layer), out flat (T * n_head * hd)."""
        group = n_head // n_kv
        n_keys = pos0 + n_tokens
        width = (n_keys + LANES - 1) // LANES * LANES
        blocks = n_tokens // 4          # queries in fours, then one at a time
        rest = n_tokens - 4 * blocks
        for task in prange((blocks + rest) * n_head):
            b = task // n_head
            h = task % n_head
            if b < blocks:
                s = np.empty(4 * width, np.float32)
                _four_queries(q, kt, v, out, 4 * b, h, n_head, hd, group, n_alloc, pos0,
                              np.float32(scale), window, s)
            else:
                s = np.empty(width, np.float32)
                _one_head(q, kt, v, out, 4 * blocks + b - blocks, h, n_head, hd, group, n_alloc,
                          pos0, np.float32(scale), window, s)

    return attend


SERIAL_BELOW = 1 << 16   # query x key pairs: below this, one thread (a parallel launch costs more)


def attention(q: np.ndarray, kt: np.ndarray, v: np.ndarray, pos0: int, scale: float, window: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """Attention of q (T, n_head, hd) at positions pos0.. over one layer's cache (kt, v),
    which must hold keys 0 .. pos0 + T - 1. Returns (T, n_head * hd)."""
    n_tokens, n_head, hd = q.shape
    n_kv, hd_k, n_alloc = kt.shape
    if hd_k != hd or v.shape != (n_kv, n_alloc, hd) or hd % LANES or n_head % n_kv:
        raise ValueError(f"attention shapes do not fit: q {q.shape}, kt {kt.shape}, v {v.shape}")
    if pos0 + n_tokens + LANES > n_alloc:
        raise ValueError(f"the cache holds {n_alloc - LANES} keys, not {pos0 + n_tokens}")
    if out is None:
        out = np.empty((n_tokens, n_head * hd), np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    parallel = n_tokens * (pos0 + n_tokens) * n_head >= SERIAL_BELOW
    attention_kernel(parallel)(q.reshape(-1), kt.reshape(-1), v.reshape(-1), n_tokens, n_head, hd,
                               n_kv, n_alloc, pos0, float(scale), int(window), out.reshape(-1))
    return out
