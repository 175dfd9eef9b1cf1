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
