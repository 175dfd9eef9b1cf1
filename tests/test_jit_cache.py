"""The numba cache keys of factory-made kernels (quant/jit_cache.py)."""
from __future__ import annotations

import numba

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
