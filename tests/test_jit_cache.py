"""The numba cache (quant/jit_cache.py): keys of factory-made kernels, the version gate of the
patch, and the numba internals the patch relies on."""
from __future__ import annotations

import numba
import pytest

from lowbit.quant import jit_cache
from lowbit.quant.jit_cache import cached_kernel


class _Codegen:
    def magic_tuple(self):
        return ("cpu", "features")


def _variant(parallel: bool, step: int):
    @cached_kernel(parallel=parallel)
    def add(x):
        return x + step
    return add


def test_compile_options_and_closure_values_are_part_of_the_key():
    sig = (numba.int64,)
    key = lambda k: k._cache._index_key(sig, _Codegen())  # noqa: E731
    # the same body and closure: a parallel and a serial variant must not share an entry
    assert key(_variant(True, 1)) != key(_variant(False, 1))
    assert key(_variant(True, 1)) != key(_variant(True, 2))
    assert key(_variant(True, 1)) == key(_variant(True, 1))   # and the key is stable


def _helper_variant(half: bool):
    @numba.njit(inline="always")
    def scale(x):
        return x * 2 if half else x

    @cached_kernel()
    def kernel(x):
        return scale(x)
    return kernel


def test_the_closure_values_of_inlined_helpers_are_part_of_the_key():
    # the kernel's own closure holds only the helper; what differs is the helper's constant
    sig = (numba.int64,)
    key = lambda k: k._cache._index_key(sig, _Codegen())  # noqa: E731
    assert key(_helper_variant(True)) != key(_helper_variant(False))
    assert key(_helper_variant(True)) == key(_helper_variant(True))


def test_the_installed_numba_is_one_the_patch_was_tested_with():
    # pyproject.toml caps numba at the same range: a version outside it is untested here
    assert jit_cache.patch_supported(), numba.__version__


def test_the_internals_the_patch_uses_are_there():
    from numba.core import caching

    from lowbit.quant import _numba_patch as patch
    assert patch.ContentKeyedLocator in patch.CACHE_IMPL._locator_classes
    assert patch.CACHE_IMPL._locator_classes[0] is patch.ContentKeyedLocator
    assert {"get_cache_path", "get_source_stamp", "get_disambiguator"} <= caching._CacheLocator.__abstractmethods__
    assert callable(caching.FunctionCache._index_key)
    kernel = _variant(True, 3)
    assert isinstance(kernel._cache, patch.StableClosureCache) and kernel(4) == 7


def test_an_untested_numba_compiles_without_the_patch(monkeypatch):
    monkeypatch.setattr(numba, "__version__", "9.1.0")
    assert not jit_cache.patch_supported()
    kernel = _variant(False, 5)
    assert not kernel._cache.__class__.__name__ == "StableClosureCache" and kernel(1) == 6
    with pytest.warns(UserWarning, match="numba 9.1.0 is outside"):
        jit_cache.install()
