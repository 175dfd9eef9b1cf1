"""What a benchmark figure was measured on: printed beside every table."""
from __future__ import annotations

import os
import platform
import time

import numpy as np


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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


def describe(threads: int) -> str:
    import numba
    import llvmlite
    return (f"{cpu_name()}, {os.cpu_count()} cores, {threads} numba threads; Python "
            f"{platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
            f"llvmlite {llvmlite.__version__}")
