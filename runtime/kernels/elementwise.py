"""The small operations between the matrix products, fused into a few njit calls per layer.

    residual_norm   x += (post-norm of) a block's output; h = the next RMSNorm of x
    qk_rope_store   per-head q/k RMSNorm, RoPE, q out contiguous for the attention, k and v
                    written into the cache (keys transposed, kernels/attention.py)
    act_mul         act(gate) * up, with SiLU or tanh-GELU on 16 lanes (simd.exp_f32x16)

They compute what runtime/ops.py computes in numpy (the reference for the tests), within
float32 rounding: RMSNorm's mean of squares is accumulated in float64 as there. With
`parallel`, tokens are spread over the threads (for prompts; one token runs serially).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit, prange

from lowbit.quant.jit_cache import cached_kernel

from .simd import add_f32x16, div_f32x16, exp_f32x16, load_f32x16, mul_f32x16, splat_f32, store_f32x16

LANES = 16
GELU_C = 0.7978845608028654      # sqrt(2 / pi)
GELU_A = 0.044715

PARALLEL_TOKENS = 16


@njit(inline="always")
def _inv_rms(x, at, n, eps):
    ss = 0.0
    for i in range(n):
        v = np.float64(x[at + i])
        ss += v * v
    return np.float32(1.0 / math.sqrt(ss / n + eps))


@lru_cache(maxsize=None)
def residual_norm_kernel(parallel: bool):
    @cached_kernel(parallel=parallel, fastmath=True)
    def residual_norm(x, o, post_w, norm_w, eps, h):
        """x += rmsnorm(o) * post_w (or x += o if post_w is empty); h = rmsnorm(x) * norm_w
        (h untouched if norm_w is empty). x, o, h: (T, n) contiguous."""
        n_tokens, n = x.shape
        post = post_w.shape[0] > 0
        norm = norm_w.shape[0] > 0
        xf = x.reshape(-1)
        of = o.reshape(-1)
        hf = h.reshape(-1)
        for t in prange(n_tokens):
            at = t * n
            if post:
                s = _inv_rms(of, at, n, eps)
                for i in range(n):
                    xf[at + i] += (of[at + i] * s) * post_w[i]
            else:
                for i in range(n):
                    xf[at + i] += of[at + i]
            if norm:
                s = _inv_rms(xf, at, n, eps)
                for i in range(n):
                    hf[at + i] = (xf[at + i] * s) * norm_w[i]

    return residual_norm


def residual_norm(x, o, post_w, norm_w, eps, h=None):
    """In place on x (see the kernel); returns h, the normed x (None if norm_w is None)."""
    empty = _EMPTY
    if h is None and norm_w is not None:
        h = np.empty_like(x)
    n = x.shape[-1]
    if (x.ndim != 2 or o.shape != x.shape or (h is not None and h.shape != x.shape)
            or any(w is not None and w.shape != (n,) for w in (post_w, norm_w))):
        raise ValueError(f"residual_norm: shapes do not fit: x {x.shape}, o {o.shape}, "
                         f"weights {None if post_w is None else post_w.shape} / "
                         f"{None if norm_w is None else norm_w.shape}")
    residual_norm_kernel(x.shape[0] >= PARALLEL_TOKENS)(
        x, np.ascontiguousarray(o), empty if post_w is None else post_w,
        empty if norm_w is None else norm_w, float(eps), h if h is not None else x)
    return h


def rms_norm(x, w, eps):
    """rmsnorm(x) * w for x (T, n), contiguous float32 out."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or w.shape != (x.shape[1],):
        raise ValueError(f"rms_norm: shapes do not fit: x {x.shape}, w {w.shape}")
    h = np.empty_like(x)
    z = np.zeros_like(x)
    residual_norm_kernel(x.shape[0] >= PARALLEL_TOKENS)(z, x, _EMPTY, w, float(eps), h)
    return h


_EMPTY = np.zeros(0, np.float32)


@njit(inline="always")
def _norm_rope_head(src, s_at, dst, d_at, d_step, hd, norm_w, has_norm, eps, cos, sin, t, half, neox):
    """One head of q or k: RMSNorm over hd (optional), rotate the first 2 * half dims, and write
    dim i to dst[d_at + i * d_step]."""
    s = _inv_rms(src, s_at, hd, eps) if has_norm else np.float32(1.0)
    for i in range(half):
        ia = i if neox else 2 * i
        ib = i + half if neox else 2 * i + 1
        a = src[s_at + ia] * s
        b = src[s_at + ib] * s
        if has_norm:
            a *= norm_w[ia]
            b *= norm_w[ib]
        c = cos[t, i]
        sn = sin[t, i]
        dst[d_at + ia * d_step] = a * c - b * sn
        dst[d_at + ib * d_step] = a * sn + b * c
    for i in range(2 * half, hd):
        a = src[s_at + i] * s
        if has_norm:
            a *= norm_w[i]
        dst[d_at + i * d_step] = a


@lru_cache(maxsize=None)
def qk_rope_store_kernel(parallel: bool):
    @cached_kernel(parallel=parallel, fastmath=True)
    def qk_rope_store(y, n_head, n_kv, hd, q_norm, k_norm, eps, cos, sin, neox, kt, vc, pos0, q_out):
        """y (T, (n_head + 2 n_kv) hd): q | k | v side by side, as the stacked q/k/v product
        gives them. q (normed, rotated) -> q_out (T, n_head, hd); k -> kt[h, :, pos0 + t];
        v -> vc[h, pos0 + t, :]."""
        n_tokens = y.shape[0]
        width = y.shape[1]
        yf = y.reshape(-1)
        qf = q_out.reshape(-1)
        ktf = kt.reshape(-1)
        n_alloc = kt.shape[2]
        half = cos.shape[1]
        has_qn = q_norm.shape[0] > 0
        has_kn = k_norm.shape[0] > 0
        for t in prange(n_tokens):
            row = t * width
            for h in range(n_head):
                _norm_rope_head(yf, row + h * hd, qf, (t * n_head + h) * hd, 1, hd, q_norm, has_qn, eps,
                                cos, sin, t, half, neox)
            k0 = row + n_head * hd
            for h in range(n_kv):
                _norm_rope_head(yf, k0 + h * hd, ktf, h * hd * n_alloc + pos0 + t, n_alloc, hd, k_norm,
                                has_kn, eps, cos, sin, t, half, neox)
            v0 = k0 + n_kv * hd
            for h in range(n_kv):
                for i in range(hd):
                    vc[h, pos0 + t, i] = yf[v0 + h * hd + i]

    return qk_rope_store


def qk_rope_store(y, n_head, n_kv, hd, q_norm, k_norm, eps, cos, sin, neox, kt, vc, pos0):
    n_tokens = y.shape[0]
    if y.shape[1] != (n_head + 2 * n_kv) * hd or cos.shape != sin.shape or cos.shape[0] != n_tokens \
            or 2 * cos.shape[1] > hd or kt.shape[:2] != (n_kv, hd) or vc.shape[0] != n_kv \
            or vc.shape[2] != hd or pos0 + n_tokens > min(kt.shape[2], vc.shape[1]):
        raise ValueError("qk_rope_store: shapes do not fit")
    q_out = np.empty((n_tokens, n_head, hd), np.float32)
    qk_rope_store_kernel(n_tokens >= PARALLEL_TOKENS)(
        np.ascontiguousarray(y), n_head, n_kv, hd, _EMPTY if q_norm is None else q_norm,
        _EMPTY if k_norm is None else k_norm, float(eps), cos, sin, bool(neox), kt, vc, pos0, q_out)
    return q_out


@njit(inline="always")
def _silu16(g):
    # g / (1 + e^-g)
    e = exp_f32x16(mul_f32x16(g, splat_f32(np.float32(-1.0))))
    return div_f32x16(g, add_f32x16(e, splat_f32(np.float32(1.0))))


@njit(inline="always")
def _gelu16(g):
    # 0.5 g (1 + tanh(u)) = g * e^{2u} / (e^{2u} + 1) = g / (1 + e^{-2u}),  u = c (g + a g^3)
    u = mul_f32x16(g, add_f32x16(splat_f32(np.float32(GELU_C)),
                                 mul_f32x16(splat_f32(np.float32(GELU_C * GELU_A)), mul_f32x16(g, g))))
    e = exp_f32x16(mul_f32x16(u, splat_f32(np.float32(-2.0))))
    return div_f32x16(g, add_f32x16(e, splat_f32(np.float32(1.0))))


@lru_cache(maxsize=None)
def act_mul_kernel(gelu: bool, parallel: bool):
    @cached_kernel(parallel=parallel, fastmath=True)
    def act_mul(gu, n_ff, out):
        """out (T, n_ff) = act(gu[:, :n_ff]) * gu[:, n_ff:]; gu (T, 2 n_ff) contiguous."""
        n_tokens = gu.shape[0]
        gf = gu.reshape(-1)
        of = out.reshape(-1)
        vec = n_ff // LANES * LANES
        for t in prange(n_tokens):
            g0 = t * 2 * n_ff
            o0 = t * n_ff
            for i in range(0, vec, LANES):
                g = load_f32x16(gf, g0 + i)
                a = _gelu16(g) if gelu else _silu16(g)
                store_f32x16(of, o0 + i, mul_f32x16(a, load_f32x16(gf, g0 + n_ff + i)))
            for i in range(vec, n_ff):
                g = gf[g0 + i]
                if gelu:
                    a = np.float32(0.5) * g * (np.float32(1.0) + math.tanh(
                        np.float32(GELU_C) * (g + np.float32(GELU_A) * g * g * g)))
                else:
                    a = g / (np.float32(1.0) + math.exp(-g))
                of[o0 + i] = a * gf[g0 + n_ff + i]

    return act_mul


ACTIVATIONS = ("silu", "gelu")   # gelu: the tanh approximation


def act_mul(gu, n_ff, kind):
    if kind not in ACTIVATIONS:
        raise ValueError(f"act_mul: unknown activation {kind!r}; known: {', '.join(ACTIVATIONS)}")
    if gu.shape[1] != 2 * n_ff:
        raise ValueError(f"act_mul: gate|up of width {gu.shape[1]}, not 2 x {n_ff}")
    out = np.empty((gu.shape[0], n_ff), np.float32)
    act_mul_kernel(kind == "gelu", gu.shape[0] >= PARALLEL_TOKENS)(np.ascontiguousarray(gu), n_ff, out)
    return out
