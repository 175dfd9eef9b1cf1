"""NaN and infinity in a model: in its weights when it loads, and in the logits it produces.

A non-finite weight makes every result after it NaN, which a perplexity would report as
`PPL = nan`. So each tensor is decoded once when a model loads, a slice of rows at a time (the
slices' mapped pages released again, as the kernels release theirs), and checked. A file that
passes is remembered by its identity (path, size, modification time, inode) in lowbit's cache
directory, so the next load of a large file skips the scan. Logits are checked as well by the
commands that report them: a finite model can still overflow.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from lowbit.quant.decode import dequantize
from lowbit.quant.gguffile import GGUFFile
from lowbit.quant.jit_cache import cache_dir

from .config import ModelError
from .kernels.matrix import release_mapped_pages

SLICE_BYTES = 32 << 20          # tensor bytes decoded at a time
REMEMBER_FROM = 32 << 20        # files smaller than this are scanned on every load (it is quick)


class NonFiniteError(ModelError):
    """NaN or infinite values in a weight tensor or in the logits."""


def _identity(gguf: GGUFFile) -> str:
    st = os.stat(gguf.path)
    what = f"{os.path.realpath(gguf.path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    return hashlib.sha256(what.encode()).hexdigest()[:32]


def _marker(gguf: GGUFFile):
    return cache_dir() / "finite" / _identity(gguf)


def tensor_is_finite(gguf: GGUFFile, name: str) -> bool:
    info = gguf.tensors[name]
    if info.n_elements == 0:
        return True
    raw = gguf.raw(name)
    row_bytes = info.n_bytes // info.n_rows
    step = max(1, SLICE_BYTES // row_bytes)
    for start in range(0, info.n_rows, step):
        rows = raw[start * row_bytes:min(info.n_rows, start + step) * row_bytes]
        n = len(rows) // row_bytes
        if info.qtype.name == "F32":
            ok = np.isfinite(rows.view(np.float32)).all()
        elif info.qtype.name == "F16":
            ok = np.isfinite(rows.view(np.float16)).all()
        else:
            ok = np.isfinite(dequantize(rows, info.qtype, (n, info.n_cols))).all()
        release_mapped_pages(rows)
        if not ok:
            return False
    return True


def check_weights(gguf: GGUFFile) -> None:
    """Raise NonFiniteError naming the first tensor that holds NaN or infinity."""
    marker = _marker(gguf)
    if marker.exists():
        return
    for name in gguf.tensors:
        if not tensor_is_finite(gguf, name):
            raise NonFiniteError(f"{gguf.path.name}: tensor {name} holds NaN or infinite values")
    if gguf.path.stat().st_size >= REMEMBER_FROM:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def check_logits(logits: np.ndarray, tokens, first: int = 0, where: str = "") -> None:
    """Raise NonFiniteError, naming the token, if a row of logits (one per token from position
    `first` of `tokens`, the tokens run) is not finite; `where` adds e.g. "in chunk 3"."""
    bad = ~np.isfinite(logits.reshape(len(logits), -1)).all(axis=1)
    if bad.any():
        pos = first + int(np.argmax(bad))
        token = int(np.asarray(tokens)[pos]) if pos < len(tokens) else None
        what = f"token {token} at position {pos}" if token is not None else f"position {pos}"
        raise NonFiniteError(f"the model's logits after {what}{' ' + where if where else ''} hold "
                             f"NaN or infinite values")
