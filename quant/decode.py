"""Exact dequantization of any registered type: equal bit for bit to gguf.quants.dequantize."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import prange

from .jit_cache import cached_kernel

from .tensor_bytes import as_block_rows
from .types import QuantType


@lru_cache(maxsize=None)
def _rows_decoder(qtype: QuantType):
    decode = qtype.decode_block
    block_size, type_size = qtype.block_size, qtype.type_size

    # No fastmath: results must equal the reference to the bit.
    @cached_kernel(parallel=True)
    def decode_rows(w, chunk, out):
        chunk_bytes = chunk // block_size * type_size
        for r in prange(out.shape[0]):
            for c in range(out.shape[1] // chunk):
                decode(w[r], c * chunk_bytes, out[r, c * chunk:(c + 1) * chunk])

    return decode_rows


def dequantize(raw: np.ndarray, qtype: QuantType, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """Decode the bytes of a tensor of `qtype` with numpy shape `shape` into float32 (into `out`,
    a C-contiguous float32 array of that many values, if given: reused, its pages are not faulted
    in again)."""
    n_cols = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    rows = as_block_rows(raw, qtype, n_rows, n_cols)
    if out is None:
        out = np.empty((n_rows, n_cols), dtype=np.float32)
    elif out.dtype != np.float32 or out.size != n_rows * n_cols or not out.flags.c_contiguous:
        raise ValueError(f"dequantize needs a contiguous float32 buffer of {n_rows * n_cols} values")
    out = out.reshape(n_rows, n_cols)
    _rows_decoder(qtype)(rows, qtype.decode_chunk(n_cols), out)
    return out.reshape(shape)
