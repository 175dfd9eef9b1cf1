"""Importance matrices: per weight matrix, the per-input-column sum of squared activations and
the number of activation rows (tokens) summed, as llama-imatrix accumulates them.

Two file formats, both read and written:
- GGUF (llama.cpp's current one): tensors `<name>.in_sum2` (F32, n_cols x n_mat) and
  `<name>.counts` (F32, 1 x n_mat); metadata general.type = "imatrix", imatrix.datasets,
  imatrix.chunk_count, imatrix.chunk_size.
- legacy `.dat`: int32 n_entries, then per entry int32 name length | name | int32 ncall |
  int32 n_values | f32 values, where value = mean square * ncall; then optionally int32
  chunk count | int32 length | dataset name.
The importance of a column is sum / count, the mean squared activation.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import LowbitError
from .gguffile import GGUFError, open_gguf


class ImatrixError(LowbitError):
    """An importance matrix file that cannot be read or written, or one of another model."""


@dataclass
class ImportanceMatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)     # float64 (n_cols,)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def add(self, name: str, x: np.ndarray) -> None:
        """Accumulate activation rows x (tokens, n_cols) seen by weight matrix `name`."""
        sq = np.square(x, dtype=np.float64).sum(axis=0)
        if not np.isfinite(sq).all():
            raise ImatrixError(f"the activations entering {name} hold NaN or infinite values")
        if name in self.sums:
            self.sums[name] += sq
            self.counts[name] += x.shape[0]
        else:
            self.sums[name] = sq
            self.counts[name] = x.shape[0]

    def importance(self, name: str) -> np.ndarray | None:
        """Mean squared activation per column of weight `name` (float32), or None if unseen."""
        if name not in self.sums or self.counts[name] == 0:
            return None
        return (self.sums[name] / self.counts[name]).astype(np.float32)

    def __len__(self) -> int:
        return len(self.sums)

    def check(self) -> None:
        for name, s in self.sums.items():
            if not np.isfinite(s).all():
                raise ImatrixError(f"the importance matrix entry {name} holds NaN or infinite values")


def load(path: str | os.PathLike) -> ImportanceMatrix:
    path = Path(path)
    if not path.exists():
        raise ImatrixError(f"importance matrix {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    im = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    if not im.sums:
        raise ImatrixError(f"importance matrix {path} holds no entries")
    im.check()
    return im


def _load_gguf(path: Path) -> ImportanceMatrix:
    try:
        g = open_gguf(path)
    except GGUFError as e:
        raise ImatrixError(str(e)) from None
    im = ImportanceMatrix(datasets=list(g.get("imatrix.datasets", [])),
                          chunk_count=int(g.get("imatrix.chunk_count", 0)),
                          chunk_size=int(g.get("imatrix.chunk_size", 0)))
    for tname, info in g.tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        counts_name = name + ".counts"
        if counts_name not in g.tensors or info.qtype.name != "F32":
            raise ImatrixError(f"importance matrix {path} has {tname} without a matching F32 {counts_name}")
        sums = g.raw(tname).view(np.float32).reshape(info.shape).astype(np.float64)
        counts = g.raw(counts_name).view(np.float32).astype(np.float64)
        # One matrix per weight (n_mat = 1) for dense models; experts would add rows.
        im.sums[name] = sums.sum(axis=0) if sums.ndim == 2 else sums
        im.counts[name] = int(counts.max()) if counts.size else 0
        if sums.ndim == 2 and sums.shape[0] > 1:
            raise ImatrixError(f"{name} holds {sums.shape[0]} expert matrices; lowbit runs dense models only")
    return im


def _load_legacy(path: Path) -> ImportanceMatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixError(f"importance matrix {path} is truncated or not an imatrix file")
        vals = struct.unpack_from(fmt, data, pos)
        pos += size
        return vals

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1_000_000:
        raise ImatrixError(f"{path} is not an importance matrix (it claims {n_entries} entries)")
    im = ImportanceMatrix()
    for _ in range(n_entries):
        (n,) = take("<i")
        if not 0 < n < 4096:
            raise ImatrixError(f"importance matrix {path} is corrupt (a name of {n} bytes)")
        name = data[pos:pos + n].decode("utf-8", errors="replace")
        pos += n
        ncall, nval = take("<ii")
        if nval < 0 or pos + 4 * nval > len(data):
            raise ImatrixError(f"importance matrix {path} is truncated")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float64)
        pos += 4 * nval
        # value = mean square * ncall: keep it as ncall rows' worth of sums
        ncall = max(ncall, 1)
        im.sums[name] = values
        im.counts[name] = ncall
    if pos + 8 <= len(data):
        (im.chunk_count,) = take("<i")
        (n,) = take("<i")
        if 0 < n and pos + n <= len(data):
            im.datasets = [data[pos:pos + n].decode("utf-8", errors="replace")]
    return im


def save(im: ImportanceMatrix, path: str | os.PathLike, legacy: bool = False) -> None:
    """Write `im` (GGUF unless legacy); written to a temporary name, renamed when complete."""
    path = Path(path)
    if not path.parent.exists():
        raise ImatrixError(f"the directory {path.parent} does not exist")
    im.check()
    tmp = path.with_name(path.name + ".partial")
    try:
        (_save_legacy if legacy else _save_gguf)(im, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_gguf(im: ImportanceMatrix, path: Path) -> None:
    import gguf
    w = gguf.GGUFWriter(str(path), arch=None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", im.datasets or ["unknown"])
    w.add_uint32("imatrix.chunk_count", im.chunk_count)
    w.add_uint32("imatrix.chunk_size", im.chunk_size)
    for name in sorted(im.sums):
        w.add_tensor(name + ".in_sum2", im.sums[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(name + ".counts", np.array([[im.counts[name]]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _save_legacy(im: ImportanceMatrix, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(im.sums)))
        for name in sorted(im.sums):
            raw = name.encode()
            ncall = max(im.chunk_count, 1)
            values = (im.sums[name] / max(im.counts[name], 1) * ncall).astype("<f4")
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size))
            f.write(values.tobytes())
        dataset = (im.datasets[0] if im.datasets else "").encode()
        f.write(struct.pack("<ii", im.chunk_count, len(dataset)) + dataset)
