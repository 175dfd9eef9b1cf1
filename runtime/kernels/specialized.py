"""Hand-written kernels for types where the generic decode-then-dot kernel leaves speed behind.

Each takes the generic kernel's arguments (w, x, chunk, out) so the two are interchangeable,
and each is held against decode(W) @ x by the same tolerance tests.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.quant.bits import f16


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q8_0(w, x, chunk, out):
    # block_q8_0: d f16 | qs i8[32]. Dot the int8 quants with x first, scale once per block:
    # no decode buffer, and the 32-wide inner loop vectorises. (Gemma's 262k-row output matrix.)
    n_blocks = x.shape[0] // 32
    for r in prange(out.shape[0]):
        row = w[r]
        acc = np.float32(0.0)
        for b in range(n_blocks):
            o = b * 34
            s = np.float32(0.0)
            for j in range(32):
                s += np.float32(np.int8(row[o + 2 + j])) * x[b * 32 + j]
            acc += f16(row, o) * s
        out[r] = acc


MATVEC = {"Q8_0": matvec_q8_0}
