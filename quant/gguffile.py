"""Reading GGUF files: memory-mapped, zero-copy tensor views, all metadata, strict validation.

Layout (little-endian): magic "GGUF" | version u32 (2 or 3) | n_tensors u64 | n_kv u64
  | n_kv x (key str | value type u32 | value) | n_tensors x (name str | n_dims u32 | dims u64[n]
  | type u32 | offset u64) | padding to general.alignment | tensor data (offsets relative here).
A string is a u64 length and that many UTF-8 bytes. Dims list the fastest-varying axis first,
so a tensor's numpy shape is the dims reversed.

A model may be split over several files, as llama.cpp's gguf-split writes it:
NAME-00001-of-0000N.gguf ... NAME-0000N-of-0000N.gguf, each a GGUF file of its own with the
metadata split.no (0-based), split.count and split.tensors.count; the first holds all other
metadata, and any shard may hold tensor data. open_gguf, given the first shard, reads them all
as one model.

Every read is bounds-checked: a truncated or corrupt file raises GGUFError with one sentence.
As in ggml's reader, tensor data must follow one another in order, each padded to the alignment
(so a changed type or shape, which changes a tensor's size, is found), and arrays of arrays are
refused.
"""
from __future__ import annotations

import math
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LowbitError
from .types import QuantType, UnsupportedTypeError, by_id

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

_U64 = struct.Struct("<Q")

# GGUF metadata value types
_SCALARS = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
    4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype("?"),
    10: np.dtype("<u8"), 11: np.dtype("<i8"), 12: np.dtype("<f8"),
}
_STRING, _ARRAY = 8, 9

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
# their GGUF types as llama.cpp writes them: u16, u16, i32
SPLIT_KEY_TYPES = {SPLIT_NO: (2, None), SPLIT_COUNT: (2, None), SPLIT_TENSORS: (5, None)}
_SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


class GGUFError(LowbitError):
    """A file that is not a valid GGUF file; the message says what is wrong, in one sentence."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]       # numpy order: rows first, row length last
    qtype: QuantType
    offset: int                  # absolute byte offset in its file
    n_bytes: int
    shard: int = 0               # the file holding the data: 0 unless the model is split

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_cols(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[-1] if self.shape[-1] else 0


def shard_path(prefix: str | os.PathLike, index: int, count: int) -> Path:
    """The file name llama.cpp gives shard `index` (0-based) of `count`: PREFIX-00001-of-00003.gguf."""
    return Path(f"{os.fspath(prefix)}-{index + 1:05d}-of-{count:05d}.gguf")


def release_mapped_pages(arr: np.ndarray) -> bool:
    """Drop the whole pages of arr from the resident set if arr views a read-only file mapping
    (MADV_DONTNEED on a shared file mapping only unmaps; the data stays in the file and the page
    cache). Anything else (anonymous memory, where it would discard data) is left alone."""
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise") or base.closed:
        return False
    start = arr.ctypes.data - np.frombuffer(base, dtype=np.uint8, count=1).ctypes.data
    page = mmap.PAGESIZE
    lo = -(-start // page) * page
    hi = (start + arr.nbytes) // page * page
    if hi <= lo:
        return False
    base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return True


@dataclass
class GGUFFile:
    path: Path                   # the file given: the first shard of a split model
    version: int
    metadata: dict[str, Any]     # a split model's: the first shard's, split.* keys included
    tensors: dict[str, TensorInfo]
    data_offset: int
    _maps: list = field(repr=False, default_factory=list)   # one read-only mapping per shard
    # key -> (GGUF value type, array item type or None), so the metadata can be written back
    metadata_types: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    shards: list[Path] = field(default_factory=list)       # every file, in order ([path] if whole)

    def __post_init__(self):
        if not self.shards:
            self.shards = [self.path]

    @property
    def file_bytes(self) -> int:
        """The size of the model on disk: all its shards."""
        return sum(p.stat().st_size for p in self.shards)

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
        return np.frombuffer(self._maps[info.shard], dtype=np.uint8, count=info.n_bytes, offset=info.offset)

    def close(self) -> None:
        self._maps = []  # numpy views keep the mappings alive until they go

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

    def strings(self, count: int, what: str) -> list[str]:
        """An array of `count` strings: a tokenizer's vocabulary and merges, hundreds of
        thousands of them, so this loop does the bare reads (string() reports what is wrong)."""
        buf, pos, size = self.buf, self.pos, len(self.buf)
        length = _U64.unpack_from
        out = []
        try:
            for _ in range(count):
                if pos + 8 > size:
                    break
                end = pos + 8 + length(buf, pos)[0]
                if end > size:
                    break
                out.append(str(buf[pos + 8:end], "utf-8"))
                pos = end
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path} is corrupt: {what} is not valid UTF-8") from None
        self.pos = pos
        if len(out) < count:
            self.string(what)       # raises: the next string runs past the end of the file
        return out

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
                return self.strings(count, what)
            if item_type == _ARRAY:
                raise GGUFError(f"{self.path} is corrupt: {what} is an array of arrays")
            raise GGUFError(f"{self.path} is corrupt: {what} has unknown item type {item_type}")
        raise GGUFError(f"{self.path} is corrupt: {what} has unknown value type {vtype}")


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Map and parse a GGUF file, or all shards of a split model given the first; raises
    GGUFError (one sentence) for anything malformed, missing or mismatched."""
    first = _open_one(Path(path))
    count = int(first.metadata.get(SPLIT_COUNT, 0) or 0)
    if count <= 1:
        return first
    return _open_shards(first, count)


def _open_shards(first: GGUFFile, count: int) -> GGUFFile:
    path = first.path
    index = int(first.metadata.get(SPLIT_NO, 0))
    named = _SHARD_NAME.search(path.name)
    prefix = path.parent / path.name[:named.start()] if named else None
    if index != 0:
        hint = f": open {shard_path(prefix, 0, count).name}" if prefix else ""
        raise GGUFError(f"{path} is shard {index + 1} of {count} of a split model; a split model is "
                        f"opened by its first shard{hint}")
    if named is None or (int(named.group(1)), int(named.group(2))) != (1, count):
        raise GGUFError(f"{path} is the first of {count} shards, but its name does not end in "
                        f"-00001-of-{count:05d}.gguf, so the other shards cannot be found")
    declared = first.metadata.get(SPLIT_TENSORS)
    tensors = dict(first.tensors)
    maps, shards = list(first._maps), [path]
    for i in range(1, count):
        p = shard_path(prefix, i, count)
        if not p.exists():
            raise GGUFError(f"{p.name} is missing: {path.name} is the first of {count} shards")
        part = _open_one(p)
        meta = part.metadata
        if SPLIT_NO not in meta:
            raise GGUFError(f"{p} is not a shard of a split model (it has no {SPLIT_NO})")
        if (meta.get(SPLIT_COUNT), meta.get(SPLIT_TENSORS)) != (count, declared):
            raise GGUFError(f"{p} is a shard of another model: it belongs to {meta.get(SPLIT_COUNT)} shards "
                            f"of {meta.get(SPLIT_TENSORS)} tensors, {path.name} to {count} of {declared}")
        if meta[SPLIT_NO] != i:
            raise GGUFError(f"{p} holds shard {meta[SPLIT_NO] + 1} of {count}, not shard {i + 1}: "
                            f"the shards are misnamed or out of order")
        for name, info in part.tensors.items():
            if name in tensors:
                raise GGUFError(f"tensor {name} appears in two shards of {path.name} ({p.name} and another)")
            tensors[name] = TensorInfo(info.name, info.shape, info.qtype, info.offset, info.n_bytes, shard=i)
        maps += part._maps
        shards.append(p)
    if declared is not None and len(tensors) != declared:
        raise GGUFError(f"the {count} shards of {path.name} hold {len(tensors)} tensors, but it declares "
                        f"{declared}: a shard is of another model")
    return GGUFFile(path, first.version, first.metadata, tensors, first.data_offset, maps,
                    first.metadata_types, shards)


def _open_one(path: Path) -> GGUFFile:
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

    return GGUFFile(path, version, metadata, tensors, data_offset, [buf], types)
