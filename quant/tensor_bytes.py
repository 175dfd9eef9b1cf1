"""Validation of raw tensor bytes against a type and shape, before any njit code reads them."""
from __future__ import annotations

import numpy as np

from .types import QuantType


def as_block_rows(raw: np.ndarray, qtype: QuantType, n_rows: int, n_cols: int) -> np.ndarray:
    """View `raw` (bytes of a row-major (n_rows, n_cols) tensor of `qtype`) as uint8 rows.

    Raises ValueError with one clear sentence if the row length is not whole blocks or the
    byte count does not match, so that no kernel ever indexes past the buffer.
    """
    row_bytes = qtype.row_bytes(n_cols)
    if not isinstance(raw, np.ndarray):
        raise TypeError(f"tensor bytes must be a numpy array, not {type(raw).__name__}")
    if raw.dtype != np.uint8:
        raw = raw.view(np.uint8) if raw.flags.c_contiguous else np.ascontiguousarray(raw).view(np.uint8)
    if raw.size != n_rows * row_bytes:
        raise ValueError(
            f"{qtype.name} tensor of {n_rows} x {n_cols} needs {n_rows * row_bytes} bytes, "
            f"got {raw.size}")
    return np.ascontiguousarray(raw).reshape(n_rows, row_bytes)
