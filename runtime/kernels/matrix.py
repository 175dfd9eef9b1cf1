"""QuantMatrix: a quantized (n_rows x n_cols) weight matrix and its fused products.

The checks here are the kernels' first tier: shapes, dtypes and byte counts are validated in
Python, with a clear error, before any njit code indexes the raw bytes.
"""
from __future__ import annotations

import numpy as np

from lowbit.quant.decode import dequantize
from lowbit.quant.tensor_bytes import as_block_rows
from lowbit.quant.types import QuantType

from .fused import matmul_kernel, matvec_kernel


class KernelError(ValueError):
    """Activations that do not fit the matrix."""


class QuantMatrix:
    def __init__(self, raw: np.ndarray, qtype: QuantType, n_rows: int, n_cols: int, name: str = ""):
        self.qtype = qtype
        self.n_rows = n_rows
        self.n_cols = n_cols
        self.name = name or f"{qtype.name} {n_rows}x{n_cols} matrix"
        self.rows = as_block_rows(raw, qtype, n_rows, n_cols)
        self._chunk = qtype.decode_chunk(n_cols)

    @property
    def n_bytes(self) -> int:
        return self.rows.nbytes

    def _activations(self, x: np.ndarray, ndim: int) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != ndim or x.shape[-1] != self.n_cols:
            want = f"({self.n_cols},)" if ndim == 1 else f"(T, {self.n_cols})"
            raise KernelError(f"{self.name} takes activations of shape {want}, got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def matvec(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """W @ x for one activation vector x of length n_cols."""
        x = self._activations(x, 1)
        if out is None:
            out = np.empty(self.n_rows, dtype=np.float32)
        matvec_kernel(self.qtype)(self.rows, x, self._chunk, out)
        return out

    def matmul(self, xs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """xs @ W.T for T activation vectors (rows of xs): returns (T, n_rows)."""
        xs = self._activations(xs, 2)
        if out is None:
            out = np.empty((xs.shape[0], self.n_rows), dtype=np.float32)
        matmul_kernel(self.qtype)(self.rows, xs, self._chunk, out)
        return out

    def dequantize(self) -> np.ndarray:
        """The exact float32 matrix (materialised: for tests and references, not the hot path)."""
        return dequantize(self.rows, self.qtype, (self.n_rows, self.n_cols))
