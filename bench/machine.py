"""What a benchmark figure was measured on: printed beside every table.

The description lives in lowbit.eval.machine (the `lowbit bench` command prints it too); this
module re-exports it for the scripts here and keeps the bandwidth probe they use.
"""
from __future__ import annotations

import time

import numpy as np

from lowbit.eval.machine import cpu_name, describe, pin_threads  # noqa: F401  (re-exported)


def memory_bandwidth_gbs(n_bytes: int = 1 << 28, reps: int = 5) -> float:
    """Copy bandwidth of a large numpy array (read + write bytes per second), best of reps."""
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * n_bytes / best / 1e9
