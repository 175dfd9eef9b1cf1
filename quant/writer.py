"""Writing GGUF files: metadata with their GGUF types, tensor data streamed in order, whole or
split into shards as llama.cpp's gguf-split makes them.

Tensor data go to the file as they are produced (a tensor may come in chunks of rows), so the
writer holds no more than one chunk. Each file is written unnamed and given its name only when
every file of the output is complete: a failed, interrupted or killed run leaves nothing behind
(see PendingFile).
"""
from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .gguffile import _ARRAY, _SCALARS, _STRING, DEFAULT_ALIGNMENT, SPLIT_COUNT, SPLIT_KEY_TYPES, SPLIT_NO, \
    SPLIT_TENSORS, shard_path
from .types import QuantType

# Python value -> GGUF type, for metadata given without one
_BOOL, _U32, _F32 = 7, 4, 6


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]          # numpy order (rows first)
    qtype: QuantType
    # returns the tensor's bytes when it is written: one array, or consecutive chunks of them
    produce: Callable[[], np.ndarray | Iterable[np.ndarray]]

    @property
    def n_bytes(self) -> int:
        n_rows = int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1
        return n_rows * self.qtype.row_bytes(self.shape[-1])


@dataclass(frozen=True)
class SplitRule:
    """How to cut the output into shards. As in gguf-split, the size counts tensor data only and
    is a soft limit: a tensor larger than it gets a shard of its own. Either limit may be None."""
    max_bytes: int | None = None
    max_tensors: int | None = None

    def __post_init__(self):
        for what, n in (("the shard size", self.max_bytes), ("the tensors per shard", self.max_tensors)):
            if n is not None and n < 1:
                raise ValueError(f"{what} must be positive, not {n}")


def parse_size(text: str) -> int:
    """A size such as 500M or 2G (decimal units, as gguf-split reads them; K and T as well)."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    t = text.strip().upper().removesuffix("B")
    try:
        n = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        n = float("nan")
    if not n >= 1:
        raise ValueError(f"{text!r} is not a size such as 500M or 2G")
    return int(n)


def plan_shards(tensors: list[TensorSpec], rule: SplitRule, alignment: int = DEFAULT_ALIGNMENT) -> list[list[TensorSpec]]:
    """Tensors in file order, cut where the next would pass a limit (never leaving a shard empty)."""
    shards: list[list[TensorSpec]] = [[]]
    held = 0
    for t in tensors:
        size = _padded(t.n_bytes, alignment)
        current = shards[-1]
        full = ((rule.max_bytes is not None and held + size > rule.max_bytes)
                or (rule.max_tensors is not None and len(current) >= rule.max_tensors))
        if current and full:
            shards.append([])
            held = 0
        shards[-1].append(t)
        held += size
    return shards


def output_paths(path: str | os.PathLike, n_shards: int | None) -> list[Path]:
    """The files an output named `path` becomes: itself, or its shards (x.gguf -> x-00001-of-0000N.gguf)."""
    path = Path(path)
    if n_shards is None:
        return [path]
    prefix = path.with_suffix("") if path.suffix == ".gguf" else path
    return [shard_path(prefix, i, n_shards) for i in range(n_shards)]


def _padded(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


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


def _header(metadata: dict[str, Any], metadata_types: dict[str, tuple[int, int | None]],
            tensors: list[TensorSpec], alignment: int) -> bytes:
    header = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        vtype, item = metadata_types.get(key) or _infer_type(value)
        header += _string(key) + struct.pack("<I", vtype) + _value(vtype, item, value)
    offset = 0
    for t in tensors:
        dims = tuple(reversed(t.shape))
        header += _string(t.name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        header += struct.pack("<IQ", t.qtype.ggml_id, offset)
        offset += _padded(t.n_bytes, alignment)
    return bytes(header + bytes(-len(header) % alignment))


def _write_data(f, t: TensorSpec, alignment: int) -> None:
    produced = t.produce()
    chunks = (produced,) if isinstance(produced, np.ndarray) else produced
    written = 0
    for chunk in chunks:
        data = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1)
        written += data.size
        if written > t.n_bytes:
            break
        f.write(data.data)
    if written != t.n_bytes:
        raise ValueError(f"tensor {t.name} produced {written}{'+' if written > t.n_bytes else ''} bytes, "
                         f"expected {t.n_bytes}")
    f.write(bytes(-written % alignment))


class PendingFile:
    """A file that takes its name only when publish() is called. Where the filesystem allows,
    it is written unnamed (O_TMPFILE), so that even a killed run leaves nothing on disk; else
    it is written as NAME.partial, which discard() removes."""

    def __init__(self, path: Path):
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.named = not _can_name_unnamed(path.parent)
        if self.named:
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        else:
            fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
        self.file = os.fdopen(fd, "wb")

    def publish(self) -> None:
        self.file.flush()
        if not self.named:
            self.partial.unlink(missing_ok=True)
            _link_unnamed(self.file.fileno(), self.partial)
            self.named = True
        os.replace(self.partial, self.path)
        self.named = False
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        if self.named:
            self.partial.unlink(missing_ok=True)


def _link_unnamed(fd: int, dest: Path) -> None:
    """Give the unnamed file open as fd the name dest (linkat; two ways, as systems differ)."""
    try:
        os.link(f"/proc/self/fd/{fd}", dest, follow_symlinks=True)
        return
    except OSError:
        pass
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_empty_path = -100, 0x1000
    if libc.linkat(fd, b"", at_fdcwd, os.fsencode(dest), at_empty_path) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dest))


@lru_cache(maxsize=None)
def _can_name_unnamed(directory: Path) -> bool:
    """Whether files can be made unnamed in directory and named later: tried once, on an empty file."""
    if not hasattr(os, "O_TMPFILE"):
        return False
    probe = directory / f".lowbit-probe-{os.getpid()}"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError:
        return False
    try:
        _link_unnamed(fd, probe)
        probe.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_gguf(path: str | os.PathLike, metadata: dict[str, Any],
               metadata_types: dict[str, tuple[int, int | None]], tensors: Iterable[TensorSpec],
               alignment: int = DEFAULT_ALIGNMENT, split: SplitRule | None = None) -> list[Path]:
    """Write a GGUF v3 file, or with `split` its shards (all metadata in the first, the split.*
    keys in every one, as gguf-split writes them); returns the paths written. Metadata keep the
    given types (inferred if absent); split.* keys in `metadata` (a split source's, which describe
    its own shards) are dropped."""
    tensors = list(tensors)
    metadata = {k: v for k, v in metadata.items() if k not in SPLIT_KEY_TYPES}
    shards = plan_shards(tensors, split, alignment) if split else [tensors]
    paths = output_paths(path, len(shards) if split else None)
    pending: list[PendingFile] = []
    published: list[Path] = []
    try:
        for i, (shard, out) in enumerate(zip(shards, paths)):
            meta, types, align = (metadata, metadata_types, alignment) if i == 0 else ({}, {}, DEFAULT_ALIGNMENT)
            if split:
                # in gguf-split's order, so that a file it splits and ours are the same bytes
                meta = {**meta, SPLIT_NO: i, SPLIT_TENSORS: len(tensors), SPLIT_COUNT: len(shards)}
                types = {**types, **SPLIT_KEY_TYPES}
            pending.append(PendingFile(out))
            f = pending[-1].file
            f.write(_header(meta, types, shard, align))
            for t in shard:
                _write_data(f, t, align)
        # the first shard last: until it is there, no reader takes the others for a model
        for p in pending[1:] + pending[:1]:
            p.publish()
            published.append(p.path)
    except BaseException:
        for p in pending:
            p.discard()
        for done in published:
            done.unlink(missing_ok=True)
        raise
    return paths
