"""The two pieces of numba's caching internals lowbit replaces (see jit_cache.py).

Only imported when jit_cache.patch_supported(): numba.core.caching's _CacheLocator, FunctionCache
(its _index_key) and the locator list of CacheImpl are internals that numba does not promise to
keep; tests/test_jit_cache.py checks each of them on the installed version.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba.core import caching
from numba.core.caching import FunctionCache, _CacheLocator
from numba.core.registry import CPUDispatcher

from .jit_cache import JITTED_TREES, SOURCE_ROOT, cache_dir, source_digest

# The class that holds the locator list is public (CacheImpl) in newer numba, private before.
CACHE_IMPL = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")


class ContentKeyedLocator(_CacheLocator):
    def __init__(self, py_func, rel_path: Path):
        self._py_file = py_func.__code__.co_filename   # numba names it when a result cannot be cached
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(cache_dir() / "numba" / rel_path.with_suffix(""))

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return source_digest()

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            rel = Path(py_file).resolve().relative_to(SOURCE_ROOT)
        except (ValueError, OSError):
            return None
        if rel.parts[0] not in JITTED_TREES:
            return None
        return cls(py_func, rel)


class StableClosureCache(FunctionCache):
    """Numba's function cache, with closure variables keyed by what they are, not by pickle.

    Numba hashes a closure's cells by pickling them, and a pickled dispatcher carries a uuid that
    changes with every process, so kernels built by a factory around a jitted helper would never
    be found again. Here a jitted helper is keyed by its module, name and (recursively) its own
    closure values (its code is covered by the source digest), anything else by its repr (ints,
    strings). The compile options are part of the key too: a factory that makes a parallel and a serial variant of one body
    (`@cached_kernel(parallel=parallel)`) would otherwise have them share one cache entry, and
    whichever was compiled first would be loaded for both.
    """

    def __init__(self, py_func, options: dict):
        super().__init__(py_func)
        self._options = repr(sorted(options.items()))

    def _index_key(self, sig, codegen):
        cells = self._py_func.__closure__ or ()
        described = tuple(_describe(c.cell_contents) for c in cells)
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        cvars = hashlib.sha256((repr(described) + self._options).encode()).hexdigest()
        return (sig, codegen.magic_tuple(), (code, cvars))


def _describe(value):
    if isinstance(value, CPUDispatcher):
        # a helper made by a factory is known by its name and by its own closure values, which
        # the kernel inlines (two helpers of one name that differ in a closure constant compile
        # to different code)
        fn = value.py_func
        cells = tuple(_describe(c.cell_contents) for c in fn.__closure__ or ())
        return ("jit", fn.__module__, fn.__qualname__, cells)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, tuple):
        return tuple(_describe(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, hashlib.sha256(value.tobytes()).hexdigest())
    raise TypeError(f"closure variable of type {type(value).__name__} has no stable cache key")


def install_locator() -> None:
    if ContentKeyedLocator not in CACHE_IMPL._locator_classes:
        CACHE_IMPL._locator_classes.insert(0, ContentKeyedLocator)
