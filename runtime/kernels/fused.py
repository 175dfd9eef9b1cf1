"""Generic fused dequant-matmul kernels, built per type around the type's block decoder.

These serve the float types (F32, F16, BF16); every quantized type runs the integer kernels of
packed.py over repacked weights. They also stay the float reference for any quantized type
(bench/bench_kernels.py --generic times them).

Neither kernel materialises the float matrix. Matrix-vector (one token): each output row decodes
one block at a time into a small buffer and dots it with the matching slice of x. Matrix-matrix
(a batch of T tokens): each task decodes ROWS rows once into a tile and reuses the tile for every
token, so decoding costs O(N*K) whatever T is. Both are parallel over output rows (prange; each
task writes only its own rows). fastmath lets LLVM vectorise the float reductions; the tolerance
tests in tests/test_kernels.py hold them against decode(W) @ x.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import prange

from lowbit.quant.jit_cache import cached_kernel
from lowbit.quant.types import QuantType

ROWS = 4  # rows per task: the matmul tile height, and the matvec scheduling grain


@lru_cache(maxsize=None)
def matvec_kernel(qtype: QuantType):
    decode = qtype.decode_block
    block_size, type_size = qtype.block_size, qtype.type_size

    @cached_kernel(parallel=True, fastmath=True)
    def matvec(w, x, chunk, out):
        chunk_bytes = chunk // block_size * type_size
        n_chunks = x.shape[0] // chunk
        n_rows = out.shape[0]
        for g in prange((n_rows + ROWS - 1) // ROWS):
            buf = np.empty(chunk, dtype=np.float32)
            for r in range(g * ROWS, min(n_rows, (g + 1) * ROWS)):
                acc = np.float32(0.0)
                for c in range(n_chunks):
                    decode(w[r], c * chunk_bytes, buf)
                    base = c * chunk
                    part = np.float32(0.0)
                    for i in range(chunk):
                        part += buf[i] * x[base + i]
                    acc += part
                out[r] = acc

    return matvec


@lru_cache(maxsize=None)
def matmul_kernel(qtype: QuantType):
    decode = qtype.decode_block
    block_size, type_size = qtype.block_size, qtype.type_size

    @cached_kernel(parallel=True, fastmath=True)
    def matmul(w, xs, chunk, out):
        n_tokens, n_cols = xs.shape
        n_rows = out.shape[1]
        chunk_bytes = chunk // block_size * type_size
        for g in prange((n_rows + ROWS - 1) // ROWS):
            r0 = g * ROWS
            height = min(ROWS, n_rows - r0)
            tile = np.zeros((ROWS, n_cols), dtype=np.float32)
            for j in range(height):
                for c in range(n_cols // chunk):
                    decode(w[r0 + j], c * chunk_bytes, tile[j, c * chunk:(c + 1) * chunk])
            # A short last tile stays zero-padded, so every token runs the same 4-row dot.
            for t in range(n_tokens):
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for k in range(n_cols):
                    v = xs[t, k]
                    a0 += tile[0, k] * v
                    a1 += tile[1, k] * v
                    a2 += tile[2, k] * v
                    a3 += tile[3, k] * v
                out[t, r0] = a0
                if height > 1:
                    out[t, r0 + 1] = a1
                if height > 2:
                    out[t, r0 + 2] = a2
                if height > 3:
                    out[t, r0 + 3] = a3

    return matmul
