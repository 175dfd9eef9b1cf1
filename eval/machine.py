"""What a figure was measured on (CPU, versions), and the BLAS thread pool behind numpy.

The BLAS pool is kept at one thread: the forward pass no longer calls numpy's BLAS (its attention
is a numba kernel), but OpenBLAS's idle threads, once woken by a numpy product elsewhere, spin on
the cores numba's threads need (eval/speed.py has the measurement). Environment variables (OPENBLAS_NUM_THREADS) are read
only when numpy is imported, which the `lowbit` command has done before it parses `-t`; so the
pool is resized afterwards through OpenBLAS's own C entry point, found among the libraries this
process has loaded (what threadpoolctl does, without the dependency).
"""
from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

import numpy as np

from lowbit.quant.errors import LowbitError


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(threads: int) -> str:
    import llvmlite
    import numba
    return (f"{cpu_name()}, {os.cpu_count()} cores, {threads} numba threads; Python "
            f"{platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
            f"llvmlite {llvmlite.__version__}")


# (set, get) entry points, by the prefix and suffix the OpenBLAS build uses: numpy's wheels
# bundle scipy-openblas (64-bit integers, prefixed symbols); distributions ship plain ones.
_OPENBLAS_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


@dataclass
class BlasPool:
    """OpenBLAS's thread pool in this process."""
    path: str
    _set: object
    _get: object

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def get(self) -> int:
        return int(self._get())

    def set(self, n: int) -> None:
        self._set(ctypes.c_int(n))


def _loaded_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(None, 5) for line in f]
            paths = {parts[5].strip() for parts in fields if len(parts) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and ".so" in os.path.basename(p))


def blas_pool() -> BlasPool | None:
    """numpy's OpenBLAS pool if one is loaded and found (Linux), else None."""
    np.ones((2, 2), dtype=np.float32) @ np.ones((2, 2), dtype=np.float32)  # make sure BLAS is loaded
    for path in _loaded_libraries():
        if "blas" not in os.path.basename(path).lower():
            continue
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        for set_name, get_name in _OPENBLAS_SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.restype, getter.restype = None, ctypes.c_int
                return BlasPool(path, setter, getter)
    return None


class ThreadsError(LowbitError):
    """A thread count the machine cannot run."""


def check_threads(n: int, flag: str = "-t") -> None:
    import numba
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ThreadsError(f"{flag} must be between 1 and {numba.config.NUMBA_NUM_THREADS} on this machine, not {n}")


def set_threads(n: int | None) -> None:
    """numba's threads (-t; None leaves numba's default), checked against the machine; numpy's
    OpenBLAS pool to one thread (see the module docstring). `lowbit bench` sets the pool itself
    (--blas-threads)."""
    if n is not None:
        check_threads(n)
    pin_threads(n)


def pin_threads(numba_threads: int | None, blas_threads: int = 1) -> BlasPool | None:
    """numba's pool to numba_threads (None: leave it) and numpy's OpenBLAS pool to blas_threads,
    where it can be reached; returns the BLAS pool (None if not found)."""
    pool = blas_pool()
    if pool is not None:
        pool.set(blas_threads)
    if numba_threads is not None:
        import numba
        numba.set_num_threads(numba_threads)
    return pool
