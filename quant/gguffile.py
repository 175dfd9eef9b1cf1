"""Reading GGUF files: memory-mapped, zero-copy tensor views, all metadata, strict validation.

Layout (little-endian): magic "GGUF" | version u32 (2 or 3) | n_tensors u64 | n_kv u64
  | n_kv x (key str | value type u32 | value) | n_tensors x (name str | n_dims u32 | dims u64[n]
  | type u32 | offset u64) | padding to general.alignment | tensor data (offsets relative here).
A string is a u64 length and that many UTF-8 bytes. Dims list the fastest-varying axis first,
so a tensor's numpy shape is the dims reversed.

Every read is bounds-checked: a truncated or corrupt file raises GGUFError with one sentence.
As in ggml's reader, tensor data must follow one another in order, each padded to the alignment
(so a changed type or shape, which changes a tensor's size, is found), and arrays of arrays are
refused.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LowbitError
from .types import QuantType, UnsupportedTypeError, by_id

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types
_SCALARS = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
    4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype("?"),
    10: np.dtype("<u8"), 11: np.dtype("<i8"), 12: np.dtype("<f8"),
}
_STRING, _ARRAY = 8, 9


class GGUFError(LowbitError):
    """A file that is not a valid GGUF file; the message says what is wrong, in one sentence."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]       # numpy order: rows first, row length last
    qtype: QuantType
    offset: int                  # absolute byte offset in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_cols(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[-1] if self.shape[-1] else 0


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data_offset: int
    _map: Any = field(repr=False, default=None)
    # key -> (GGUF value type, array item type or None), so the metadata can be written back
    metadata_types: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """Metadata `<architecture>.<suffix>`, e.g. arch_key("block_count")."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view into the mapped file (no copy)."""
        info = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=info.n_bytes, offset=info.offset)

    def close(self) -> None:
        self._map = None  # numpy views keep the mapping alive until they go

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path
        self.last_item_type = None

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise GGUFError(f"{self.path} is truncated or corrupt: {what} runs past the end of the file "
                            f"(byte {self.pos} + {n} > {len(self.buf)})")
        view = memoryview(self.buf)[self.pos:end]
        self.pos = end
        return view

    def scalar(self, dtype: np.dtype, what: str):
        return np.frombuffer(self.take(dtype.itemsize, what), dtype=dtype)[0].item()

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path} is corrupt: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            item_type = self.u32(f"the item type of {what}")
            self.last_item_type = item_type
            count = self.u64(f"the length of {what}")
            if item_type in _SCALARS:
                dt = _SCALARS[item_type]
                return np.frombuffer(self.take(count * dt.itemsize, what), dtype=dt)
            if item_type == _STRING:
                if count > (len(self.buf) - self.pos) // 8:   # each string takes 8 bytes at least
                    raise GGUFError(f"{self.path} is corrupt: {what} claims {count} strings")
                return [self.string(what) for _ in range(count)]
            if item_type == _ARRAY:
                raise GGUFError(f"{self.path} is corrupt: {what} is an array of arrays")
            raise GGUFError(f"{self.path} is corrupt: {what} has unknown item type {item_type}")
        raise GGUFError(f"{self.path} is corrupt: {what} has unknown value type {vtype}")


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Map and parse a GGUF file; raises GGUFError (one sentence) for anything malformed."""
    path = Path(path)
    if not path.exists():
        raise GGUFError(f"{path} does not exist")
    if path.is_dir():
        raise GGUFError(f"{path} is a directory, not a GGUF file")
    try:
        size = path.stat().st_size
        if size < 24:
            raise GGUFError(f"{path} is not a GGUF file: it is only {size} bytes long")
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise GGUFError(f"{path} cannot be read: {e.strerror}") from None
    cur = _Cursor(buf, path)
    if bytes(cur.take(4, "the magic")) != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    version = cur.u32("the version")
    if version not in (2, 3):
        if version in (0x03000000, 0x02000000):
            raise GGUFError(f"{path} is a big-endian GGUF file, which lowbit does not read")
        raise GGUFError(f"{path} has GGUF version {version}; lowbit reads versions 2 and 3")
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    # Each entry takes at least 8 bytes, so larger counts cannot be real.
    if n_tensors > size // 8 or n_kv > size // 8:
        raise GGUFError(f"{path} is corrupt: it claims {n_tensors} tensors and {n_kv} metadata keys")

    metadata: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None]] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.u32(f"the type of {key}")
        metadata[key] = cur.value(vtype, f"metadata {key}")
        types[key] = (vtype, cur.last_item_type if vtype == _ARRAY else None)

    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}")
        n_dims = cur.u32(f"the rank of {name}")
        if not 1 <= n_dims <= 4:
            raise GGUFError(f"{path} is corrupt: tensor {name} has {n_dims} dimensions")
        dims = [cur.u64(f"the shape of {name}") for _ in range(n_dims)]
        type_id = cur.u32(f"the type of {name}")
        rel = cur.u64(f"the offset of {name}")
        infos.append((name, tuple(reversed(dims)), type_id, rel))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path} is corrupt: general.alignment is {alignment!r}, not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment

    tensors: dict[str, TensorInfo] = {}
    expected = 0    # where the next tensor's data must start, relative to data_offset
    for name, shape, type_id, rel in infos:
        try:
            qtype = by_id(type_id)
            row_bytes = qtype.row_bytes(shape[-1])
        except (UnsupportedTypeError, ValueError) as e:
            raise GGUFError(f"{path}: tensor {name}: {e}") from None
        n_rows = math.prod(shape[:-1])          # Python ints: dims are u64 and may lie
        n_bytes = n_rows * row_bytes
        start = data_offset + rel
        if name in tensors:
            raise GGUFError(f"{path} is corrupt: tensor {name} appears twice")
        if rel != expected:
            raise GGUFError(f"{path} is corrupt: tensor {name} starts at data offset {rel}, but the "
                            f"tensors before it end at {expected} (a size, type or offset is wrong)")
        if start + n_bytes > size:
            raise GGUFError(f"{path} is truncated: tensor {name} needs bytes {start}..{start + n_bytes} "
                            f"but the file has {size}")
        expected = rel + -(-n_bytes // alignment) * alignment
        tensors[name] = TensorInfo(name, shape, qtype, start, n_bytes)

    return GGUFFile(path, version, metadata, tensors, data_offset, buf, types)
