"""The non-matmul operations of a transformer forward pass, in numpy (float32 in and out).

The model runs numba kernels for all of them (kernels/elementwise.py, kernels/attention.py) and
uses only rope_tables from here; the rest is the plain form the tests hold those kernels to.
"""
from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (the mean accumulated in float64)."""
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


ACTIVATIONS = {"silu": silu, "gelu": gelu_tanh}


def rope_tables(positions: np.ndarray, n_dims: int, base: float, freq_scale: float):
    """cos and sin of theta[p, i] = freq_scale * p * base^(-2i/n_dims), shape (T, n_dims/2)."""
    inv_freq = base ** (-np.arange(0, n_dims, 2, dtype=np.float64) / n_dims)
    theta = np.outer(positions.astype(np.float64) * freq_scale, inv_freq)
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate the first n_dims of each head of x (T, heads, head_dim) in place; returns x.

    GGUF llama files store q/k rows permuted so that pairs are adjacent (2i, 2i+1); NeoX-style
    architectures rotate the halves (i, i + n_dims/2).
    """
    half = cos.shape[1]
    c = cos[:, None, :]
    s = sin[:, None, :]
    if neox:
        a, b = x[..., :half].copy(), x[..., half:2 * half].copy()
        x[..., :half] = a * c - b * s
        x[..., half:2 * half] = a * s + b * c
    else:
        a, b = x[..., 0:2 * half:2].copy(), x[..., 1:2 * half:2].copy()
        x[..., 0:2 * half:2] = a * c - b * s
        x[..., 1:2 * half:2] = a * s + b * c
    return x


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos0: int, scale: float,
              window: int = 0) -> np.ndarray:
    """Causal grouped-query attention.

    q: (T, n_head, hd) for positions q_pos0 .. q_pos0+T-1; k, v: (S, n_kv, hd) for positions
    0 .. S-1 (the cache). A query at p sees keys j <= p, and with a window only p - j < window.
    Returns (T, n_head * hd).
    """
    n_tokens, n_head, hd = q.shape
    n_keys, n_kv, _ = k.shape
    group = n_head // n_kv
    qg = q.reshape(n_tokens, n_kv, group, hd).transpose(1, 2, 0, 3).reshape(n_kv, group * n_tokens, hd)
    scores = np.matmul(qg, k.transpose(1, 2, 0)) * np.float32(scale)   # (n_kv, group*T, S)
    qpos = np.tile(np.arange(q_pos0, q_pos0 + n_tokens), group)[:, None]
    kpos = np.arange(n_keys)[None, :]
    masked = kpos > qpos
    if window:
        masked |= qpos - kpos >= window
    scores[:, masked] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, v.transpose(1, 0, 2))                         # (n_kv, group*T, hd)
    return out.reshape(n_kv, group, n_tokens, hd).transpose(2, 0, 1, 3).reshape(n_tokens, n_head * hd)
