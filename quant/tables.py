"""Tables that define the formats, read from the gguf package at run time (never retyped here).

All are plain numpy arrays, so numba freezes them into the compiled kernels as constants.
"""
from __future__ import annotations

import numpy as np
from gguf import quants as _q


def _grid(cls) -> np.ndarray:
    cls.init_grid()
    return np.ascontiguousarray(cls.grid.reshape(cls.grid_shape), dtype=np.float32)


# Codebooks: rows are grid points, stored as the values the decoder multiplies by the scale.
IQ2XXS_GRID = _grid(_q.IQ2_XXS)   # (256, 8)  E8-lattice points, magnitudes 8, 25, 43
IQ2XS_GRID = _grid(_q.IQ2_XS)     # (512, 8)
IQ2S_GRID = _grid(_q.IQ2_S)       # (1024, 8)
IQ3XXS_GRID = _grid(_q.IQ3_XXS)   # (256, 4)
IQ3S_GRID = _grid(_q.IQ3_S)       # (512, 4)
IQ1S_GRID = _grid(_q.IQ1_S)       # (2048, 8) ternary points, values -1, 0, 1

# 7 stored sign bits -> 8 sign bits with even parity (the 8th bit is implied).
KSIGNS = np.frombuffer(_q.IQ2_XXS.ksigns, dtype=np.uint8).copy()
IQ1_DELTA = np.float32(_q.IQ1_S.delta)
IQ4NL_VALUES = np.array(_q.IQ4_NL.kvalues, dtype=np.float32)
MXFP4_VALUES = np.array(_q.MXFP4.kvalues, dtype=np.float32)
