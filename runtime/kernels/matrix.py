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
from .packed import ACTIVATION_PLANES, QuantizedActivations, packed_kernel
from .repack import repack, unpacking


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
        # Quantized types run the integer kernels over a repacked copy (built on first use);
        # the float types keep the generic decode-and-dot kernels.
        self.unpacking = unpacking(qtype)
        self._packed = None

    @property
    def n_bytes(self) -> int:
        return self.rows.nbytes

    def _activations(self, x: np.ndarray, ndim: int) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != ndim or x.shape[-1] != self.n_cols:
            want = f"({self.n_cols},)" if ndim == 1 else f"(T, {self.n_cols})"
            raise KernelError(f"{self.name} takes activations of shape {want}, got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def integer(self) -> bool:
        """True if products run on int8 activations (every quantized type; not the float ones)."""
        return self.unpacking is not None

    def packed(self):
        """The repacked weights (q, scale, min), built on first use (repack.py: the layout)."""
        if self._packed is None:
            self._packed = repack(self.rows, self.qtype, self.n_rows, self.n_cols)
        return self._packed

    @property
    def packed_bytes(self) -> int:
        return sum(a.nbytes for a in self._packed) if self._packed is not None else 0

    def quantize(self, xs: np.ndarray, planes: int = ACTIVATION_PLANES) -> QuantizedActivations:
        """Activations (T, n_cols) quantized for this matrix's integer kernel."""
        return QuantizedActivations(self._activations(xs, 2), planes)

    def matvec(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """W @ x for one activation vector x of length n_cols."""
        x = self._activations(x, 1)
        if out is None:
            out = np.empty(self.n_rows, dtype=np.float32)
        if self.integer:
            return self.matmul_quantized(QuantizedActivations(x[None, :]), out.reshape(1, -1)).reshape(-1)
        matvec_kernel(self.qtype)(self.rows, x, self._chunk, out)
        return out

    def matmul(self, xs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """xs @ W.T for T activation vectors (rows of xs): returns (T, n_rows)."""
        xs = self._activations(xs, 2)
        if out is None:
            out = np.empty((xs.shape[0], self.n_rows), dtype=np.float32)
        if self.integer:
            return self.matmul_quantized(QuantizedActivations(xs), out)
        matmul_kernel(self.qtype)(self.rows, xs, self._chunk, out)
        return out

    def matmul_quantized(self, qa: QuantizedActivations, out: np.ndarray | None = None) -> np.ndarray:
        """Like matmul, for activations already quantized (one quantization, several matrices)."""
        if not self.integer:
            raise KernelError(f"{self.name} ({self.qtype.name}) has no integer kernel")
        if qa.n_cols != self.n_cols:
            raise KernelError(f"{self.name} takes activations of shape (T, {self.n_cols}), "
                              f"got (T, {qa.n_cols})")
        if out is None:
            out = np.empty((qa.n_tokens, self.n_rows), dtype=np.float32)
        elif out.shape != (qa.n_tokens, self.n_rows) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise KernelError(f"{self.name}: output must be a contiguous float32 array of shape "
                              f"({qa.n_tokens}, {self.n_rows})")
        q, scale, mn = self.packed()
        spec = self.unpacking
        packed_kernel(spec.sub, spec.affine, qa.planes)(q, scale, mn, max(spec.offset, 0), qa.qx, qa.dx, qa.isum,
                                             qa.n_tokens, self.n_rows, out.reshape(-1))
        return out

    def dequantize(self) -> np.ndarray:
        """The exact float32 matrix (materialised: for tests and references, not the hot path)."""
        return dequantize(self.rows, self.qtype, (self.n_rows, self.n_cols))
