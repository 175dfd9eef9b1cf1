"""Encoding float rows into any registered type that has an encoder, in parallel over rows."""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
from numba import prange

from .jit_cache import cached_kernel
from .types import QuantType

NO_IMPORTANCE = np.zeros(0, dtype=np.float32)


@lru_cache(maxsize=None)
def _rows_encoder(qtype: QuantType):
    encode_row = qtype.encode_row

    @cached_kernel(parallel=True)
    def encode_rows(x, imp, out):
        for r in prange(x.shape[0]):
            encode_row(x[r], imp, out[r])

    return encode_rows


@cached_kernel(parallel=True, fastmath={"reassoc"})
def _nonfinite_rows(x):
    """How many rows of x (2-D float32) hold a NaN or an infinity: v * 0 is 0 for every finite
    v and NaN otherwise, so a row's sum of them is NaN exactly when the row holds one (reassoc
    only, so that the sums vectorize and NaN still counts)."""
    bad = 0
    for r in prange(x.shape[0]):
        row = x[r]
        s = np.float32(0.0)
        for i in range(row.shape[0]):
            s += row[i] * np.float32(0.0)
        if s != s:
            bad += 1
    return bad


def all_finite(rows: np.ndarray) -> bool:
    """Whether the float32 matrix rows holds no NaN or infinity (in parallel, without the
    temporary array np.isfinite makes)."""
    return _nonfinite_rows(rows) == 0


def check_importance(importance, n_cols: int, what: str = "the importance matrix") -> np.ndarray:
    if importance is None:
        return NO_IMPORTANCE
    imp = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
    if imp.size != n_cols:
        raise ValueError(f"{what} has {imp.size} columns but the rows have {n_cols}")
    if not np.isfinite(imp).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    if (imp < 0).any():
        raise ValueError(f"{what} holds negative values")
    return imp


def quantize(rows: np.ndarray, qtype: QuantType, importance: np.ndarray | None = None,
             progress: Callable[[int], None] | None = None, batch_rows: int = 256) -> np.ndarray:
    """Encode float rows (n_rows, n_cols) as qtype; returns uint8 (n_rows, row_bytes).

    importance: per-column weights (mean squared activations), or None. progress(n) is called
    with the number of rows done after each batch.
    """
    if qtype.encode_row is None:
        raise ValueError(f"lowbit has no encoder for {qtype.name} yet")
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows to quantize must be a matrix, not shape {rows.shape}")
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n_rows, n_cols = rows.shape
    row_bytes = qtype.row_bytes(n_cols)
    if not all_finite(rows):
        raise ValueError("the weights hold NaN or infinite values")
    imp = check_importance(importance, n_cols)
    out = np.empty((n_rows, row_bytes), dtype=np.uint8)
    kernel = _rows_encoder(qtype)
    for start in range(0, n_rows, batch_rows):
        stop = min(n_rows, start + batch_rows)
        kernel(rows[start:stop], imp, out[start:stop])
        if progress:
            progress(stop - start)
    return out
