"""lowbit.quant: GGUF block formats (decode, encode), the type registry, GGUF files."""
from . import jit_cache

# Must run before any @njit(cache=True) below is decorated: the locator is chosen then.
jit_cache.install()
