"""Writing GGUF files: metadata with their GGUF types, tensor data streamed in order.

The file is written to `<out>.partial` and renamed when complete, so a failed or interrupted
run never leaves a half-written model under the requested name.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .gguffile import _ARRAY, _SCALARS, _STRING, DEFAULT_ALIGNMENT
from .types import QuantType

# Python value -> GGUF type, for metadata given without one
_BOOL, _U32, _F32 = 7, 4, 6


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]          # numpy order (rows first)
    qtype: QuantType
    produce: Callable[[], np.ndarray]   # returns the tensor's bytes when it is written

    @property
    def n_bytes(self) -> int:
        n_rows = int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1
        return n_rows * self.qtype.row_bytes(self.shape[-1])


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _infer_type(value) -> tuple[int, int | None]:
    if isinstance(value, bool):
        return _BOOL, None
    if isinstance(value, int):
        return (_U32 if 0 <= value < 2**32 else 11), None
    if isinstance(value, float):
        return _F32, None
    if isinstance(value, str):
        return _STRING, None
    if isinstance(value, np.ndarray):
        for code, dt in _SCALARS.items():
            if dt == value.dtype.newbyteorder("<") or dt == value.dtype:
                return _ARRAY, code
    if isinstance(value, (list, tuple)):
        first = value[0] if len(value) else ""
        return _ARRAY, _infer_type(first)[0]
    raise TypeError(f"cannot store metadata value of type {type(value).__name__}")


def _value(vtype: int, item: int | None, value) -> bytes:
    if vtype in _SCALARS:
        return np.array(value, dtype=_SCALARS[vtype]).tobytes()
    if vtype == _STRING:
        return _string(value)
    if vtype == _ARRAY:
        head = struct.pack("<IQ", item, len(value))
        if item in _SCALARS:
            return head + np.asarray(value, dtype=_SCALARS[item]).tobytes()
        if item == _STRING:
            return head + b"".join(_string(v) for v in value)
    raise TypeError(f"cannot store GGUF value type {vtype}/{item}")


def write_gguf(path: str | os.PathLike, metadata: dict[str, Any],
               metadata_types: dict[str, tuple[int, int | None]], tensors: Iterable[TensorSpec],
               alignment: int = DEFAULT_ALIGNMENT, on_tensor: Callable[[TensorSpec], None] | None = None) -> int:
    """Write a GGUF v3 file; returns its size. Metadata keep the given types (inferred if absent)."""
    path = Path(path)
    tensors = list(tensors)
    header = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        vtype, item = metadata_types.get(key) or _infer_type(value)
        header += _string(key) + struct.pack("<I", vtype) + _value(vtype, item, value)
    offset = 0
    for t in tensors:
        dims = tuple(reversed(t.shape))
        header += _string(t.name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        header += struct.pack("<IQ", t.qtype.ggml_id, offset)
        offset += -(-t.n_bytes // alignment) * alignment
    pad = -len(header) % alignment
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(header + bytes(pad))
            for t in tensors:
                data = np.ascontiguousarray(t.produce()).view(np.uint8).reshape(-1)
                if data.size != t.n_bytes:
                    raise ValueError(f"tensor {t.name} produced {data.size} bytes, expected {t.n_bytes}")
                f.write(data.tobytes())
                f.write(bytes(-data.size % alignment))
                if on_tensor:
                    on_tensor(t)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size
