"""Numba's on-disk cache, made to survive fresh clones.

Numba keys its cache on the source file's path and modification time, so a fresh clone of the
repository (CI, a new machine) never finds what an earlier run compiled. This locator keys the
cache on the *content* of lowbit's jitted source trees instead and keeps it in the user's cache
directory, outside the clone. Any edit to quant/ or runtime/ invalidates every entry, which is
coarse but never stale: numba itself only watches the file that defines a function, not the
files of the helpers it inlines.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from numba import njit
from numba.core import caching
from numba.core.caching import FunctionCache, _CacheLocator
from numba.core.registry import CPUDispatcher

# The class that holds the locator list is public (CacheImpl) in newer numba, private before.
_CACHE_IMPL = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")

SOURCE_ROOT = Path(__file__).resolve().parent.parent
JITTED_TREES = ("quant", "runtime")


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


class ContentKeyedLocator(_CacheLocator):
    def __init__(self, py_func, rel_path: Path):
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
    strings). The compile options are
    part of the key too: a factory that makes a parallel and a serial variant of one body
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
    raise TypeError(f"closure variable of type {type(value).__name__} has no stable cache key")


def cached_kernel(**options):
    """@njit(cache=True, **options) for functions built inside a factory (see StableClosureCache)."""
    def wrap(fn):
        dispatcher = njit(cache=True, **options)(fn)
        dispatcher._cache = StableClosureCache(dispatcher.py_func, options)
        return dispatcher
    return wrap


def install() -> None:
    if ContentKeyedLocator not in _CACHE_IMPL._locator_classes:
        _CACHE_IMPL._locator_classes.insert(0, ContentKeyedLocator)
