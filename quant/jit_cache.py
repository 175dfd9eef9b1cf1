"""Numba's on-disk cache, made to survive fresh clones.

Numba keys its cache on the source file's path and modification time, so a fresh clone of the
repository (CI, a new machine) never finds what an earlier run compiled. This locator keys the
cache on the *content* of lowbit's jitted source trees instead and keeps it in the user's cache
directory, outside the clone. Any edit to quant/ or runtime/ invalidates every entry, which is
coarse but never stale: numba itself only watches the file that defines a function, not the
files of the helpers it inlines.

Both pieces reach into numba's internals (numba.core.caching: the locator list of CacheImpl,
_CacheLocator, FunctionCache._index_key), which numba does not promise to keep. They are used
only with the numba versions they were tested on (TESTED_NUMBA, the same range pyproject.toml
allows; tests/test_jit_cache.py checks the internals they touch). With any other numba the
kernels still run, compiled in every process instead of read from the disk cache, and importing
lowbit.quant warns once.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numba
from numba import njit

# [lowest, first untested) numba versions; keep in step with pyproject.toml
TESTED_NUMBA = ((0, 60), (0, 69))

SOURCE_ROOT = Path(__file__).resolve().parent.parent
JITTED_TREES = ("quant", "runtime")


def numba_version() -> tuple[int, int]:
    major, minor = numba.__version__.split(".")[:2]
    return int(major), int(minor)


def patch_supported() -> bool:
    low, high = TESTED_NUMBA
    return low <= numba_version() < high


def cache_dir() -> Path:
    """The directory for lowbit's caches: $LOWBIT_CACHE_DIR, else $XDG_CACHE_HOME/lowbit."""
    if os.environ.get("LOWBIT_CACHE_DIR"):
        return Path(os.environ["LOWBIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lowbit"


@lru_cache(maxsize=1)
def source_digest() -> str:
    h = hashlib.sha256()
    for tree in JITTED_TREES:
        for path in sorted((SOURCE_ROOT / tree).rglob("*.py")):
            h.update(str(path.relative_to(SOURCE_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def cached_kernel(**options):
    """@njit(cache=True, **options) for functions built inside a factory: their cache entries
    are keyed by what the closure holds (quant/_numba_patch.py: StableClosureCache)."""
    def wrap(fn):
        if not patch_supported():
            return njit(**options)(fn)
        from ._numba_patch import StableClosureCache
        dispatcher = njit(cache=True, **options)(fn)
        dispatcher._cache = StableClosureCache(dispatcher.py_func, options)
        return dispatcher
    return wrap


def install() -> None:
    """Key numba's cache of lowbit's own functions on their content (before any is decorated)."""
    if not patch_supported():
        low, high = TESTED_NUMBA
        warnings.warn(f"numba {numba.__version__} is outside the versions lowbit's kernel cache was "
                      f"tested with ({low[0]}.{low[1]} to before {high[0]}.{high[1]}): kernels made by "
                      f"factories are compiled again in every process", stacklevel=2)
        return
    from ._numba_patch import install_locator
    install_locator()
