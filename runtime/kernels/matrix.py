"""QuantMatrix: a quantized (n_rows x n_cols) weight matrix and its fused products.

The checks here are the kernels' first tier: shapes, dtypes and byte counts are validated in
Python, with a clear error, before any njit code indexes the raw bytes.
"""
from __future__ import annotations

import mmap

import numpy as np

from lowbit.quant.decode import dequantize
from lowbit.quant.tensor_bytes import as_block_rows
from lowbit.quant.types import QuantType

from . import floats
from .fused import matmul_kernel, matvec_kernel
from .layout import GROUP, layout_of
from .packed import ACTIVATION_PLANES, QuantizedActivations, packed_kernel
from .repack import repack


class KernelError(ValueError):
    """Activations that do not fit the matrix."""


def release_mapped_pages(arr: np.ndarray) -> bool:
    """Drop the whole pages of arr from the resident set if arr views a read-only file mapping
    (MADV_DONTNEED on a shared file mapping only unmaps; the data stays in the file and the page
    cache). Anything else (anonymous memory, where it would discard data) is left alone."""
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise") or base.closed:
        return False
    start = arr.ctypes.data - np.frombuffer(base, dtype=np.uint8, count=1).ctypes.data
    page = mmap.PAGESIZE
    lo = -(-start // page) * page
    hi = (start + arr.nbytes) // page * page
    if hi <= lo:
        return False
    base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return True


class QuantMatrix:
    def __init__(self, raw: np.ndarray, qtype: QuantType, n_rows: int, n_cols: int, name: str = ""):
        self.qtype = qtype
        self.n_rows = n_rows
        self.n_cols = n_cols
        self.name = name or f"{qtype.name} {n_rows}x{n_cols} matrix"
        self.rows = as_block_rows(raw, qtype, n_rows, n_cols)
        self._chunk = qtype.decode_chunk(n_cols)
        # Quantized types run the integer kernels over a repacked copy (built on first use);
        # the float types (rows of 16 or more) the float kernels over the file's bytes in place.
        self.layout = layout_of(qtype)
        self._float = floats.weight_format(qtype) if n_cols >= floats.MIN_COLS else None
        self._weights = floats.weight_view(self.rows, self._float) if self._float is not None else None
        self._packed = None
        self._offsets = None
        self._calls = {}

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
        return self.layout is not None

    def packed(self) -> np.ndarray:
        """The repacked weights, built on first use (layout.py: the layout).

        When the GGUF bytes are a memory-mapped file, their pages are released from this
        process's resident set once repacked (they stay in the page cache, and come back on
        the next access, e.g. an embedding row of a tied output matrix)."""
        if self._packed is None:
            self._packed = repack(self.rows, self.qtype, self.n_rows, self.n_cols, release_mapped_pages)
        return self._packed

    def offsets(self) -> np.ndarray:
        """Per row (padded to whole groups), the symmetric offset OFF as float32 (0 if affine)."""
        if self._offsets is None:
            groups = self.packed().shape[0]
            self._offsets = np.full(groups * GROUP, max(self.layout.offset, 0), np.float32)
        return self._offsets

    @property
    def packed_bytes(self) -> int:
        """Bytes of the repacked weights (0 until built)."""
        return self._packed.nbytes if self._packed is not None else 0

    @property
    def kernel_key(self) -> tuple:
        """Matrices with equal keys can share a kernel call (layout.py)."""
        return self.layout.kernel_key

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
        if self._float is not None:
            floats.matvec(self._weights, self._float, x, out)
            return out
        matvec_kernel(self.qtype)(self.rows, x, self._chunk, out)
        return out

    def matmul(self, xs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """xs @ W.T for T activation vectors (rows of xs): returns (T, n_rows)."""
        xs = self._activations(xs, 2)
        if out is None:
            out = np.empty((xs.shape[0], self.n_rows), dtype=np.float32)
        if self.integer:
            return self.matmul_quantized(QuantizedActivations(xs), out)
        if self._float is not None:
            floats.matmul(self._weights, self._float, xs, out)
            return out
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
        kernel, q, offsets = self._bound(qa.planes)
        kernel(q, offsets, qa.qx, qa.dx, qa.isum, qa.n_tokens, self.n_rows, out.reshape(-1))
        return out

    def _bound(self, planes: int):
        """(kernel, q, offsets) for P planes, looked up once (a generated token makes a few
        hundred products: the Python around each call counts)."""
        bound = self._calls.get(planes)
        if bound is None:
            bound = self._calls[planes] = (packed_kernel(self.kernel_key, planes), self.packed(), self.offsets())
        return bound

    def dequantize(self) -> np.ndarray:
        """The exact float32 matrix (materialised: for tests and references, not the hot path)."""
        return dequantize(self.rows, self.qtype, (self.n_rows, self.n_cols))


class StackedMatrix:
    """Integer matrices with one row length and kernel variant (e.g. q, k and v), multiplied by
    the same activations in one kernel call: the output is their outputs side by side.

    Their repacked arrays are concatenated once (on first use) and each matrix keeps views into
    the concatenation, so the memory is not doubled; every row count must be whole groups of 16.
    """

    def __init__(self, matrices: list[QuantMatrix]):
        first = matrices[0]
        if not self.can_stack(matrices):
            raise KernelError(f"{', '.join(m.name for m in matrices)} cannot be stacked: each must be an "
                              f"integer matrix of {first.n_cols} columns, whole row groups and one kernel layout")
        self.matrices = list(matrices)
        self.n_cols = first.n_cols
        self.n_rows = sum(m.n_rows for m in matrices)
        self._arrays = None
        self._kernels = {}

    @staticmethod
    def can_stack(matrices: list[QuantMatrix]) -> bool:
        first = matrices[0]
        return all(m.integer and m.n_cols == first.n_cols and m.kernel_key == first.kernel_key
                   and m.n_rows % GROUP == 0 for m in matrices)

    def _stack(self):
        q = np.concatenate([m.packed() for m in self.matrices])
        offsets = np.concatenate([m.offsets() for m in self.matrices])
        g = 0
        for m in self.matrices:
            n = m.n_rows // GROUP
            m._packed = q[g:g + n]
            m._offsets = offsets[g * GROUP:(g + n) * GROUP]
            m._calls = {}
            g += n
        self._arrays = (q, offsets)

    def matmul_quantized(self, qa: QuantizedActivations) -> np.ndarray:
        """(T, n_rows): the matrices' outputs side by side."""
        if qa.n_cols != self.n_cols:
            raise KernelError(f"stacked matrices take activations of shape (T, {self.n_cols}), "
                              f"got (T, {qa.n_cols})")
        if self._arrays is None:
            self._stack()
        q, offsets = self._arrays
        kernel = self._kernels.get(qa.planes)
        if kernel is None:
            kernel = self._kernels[qa.planes] = packed_kernel(self.matrices[0].kernel_key, qa.planes)
        out = np.empty((qa.n_tokens, self.n_rows), dtype=np.float32)
        kernel(q, offsets, qa.qx, qa.dx, qa.isum, qa.n_tokens, self.n_rows, out.reshape(-1))
        return out
