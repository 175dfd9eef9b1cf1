"""Repacking a quantized tensor at load into the layout the integer kernels read (layout.py).

Each type's unpacker (Packing.unpack, next to its decoder in quant/formats) turns one GGUF block
of one row into codes u and a record of scale fields; this module interleaves 16 rows' worth
into the group layout: the codes through the weight encoding's packer, the scale fields field
by field. Work goes in chunks of rows so that the caller can release the source pages as it
goes (the GGUF bytes of a large matrix and its repacked copy are never resident together).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import prange

from lowbit.quant.jit_cache import cached_kernel
from lowbit.quant.types import QuantType

from .layout import GROUP, Layout, layout_of


@lru_cache(maxsize=None)
def repack_kernel(qtype: QuantType):
    """repack(rows, q, widths, src, dst): GGUF rows -> q (zero-filled, [G, n_blocks * block_bytes])."""
    lay = layout_of(qtype)
    unpack = qtype.packing.unpack
    pack = lay.weights.pack
    block_size, type_size = qtype.block_size, qtype.type_size
    nsteps = lay.nsteps
    weight_bytes, block_bytes = lay.weight_bytes, lay.block_bytes
    rec_bytes = max(1, sum(lay.scales.fields(lay.n_sub)))

    @cached_kernel(parallel=True)
    def repack(rows, q, widths, src, dst):
        n_rows = rows.shape[0]
        n_blocks = rows.shape[1] // type_size
        for g in prange(q.shape[0]):
            u = np.zeros(block_size, np.uint8)
            rec = np.zeros(rec_bytes, np.uint8)
            y = np.zeros(block_size, np.float32)
            tmp = np.zeros(block_size * GROUP, np.uint8)
            # the scatter below moves 4 bytes at a time: a step holds 4 columns of a row
            u4, tmp4 = u.view(np.uint32), tmp.view(np.uint32)
            qg = q[g]
            for bk in range(n_blocks):
                base = bk * block_bytes
                tmp[:] = 0
                for ri in range(GROUP):
                    r = g * GROUP + ri
                    if r >= n_rows:
                        break
                    unpack(rows[r], bk * type_size, u, rec, y)
                    for st in range(block_size // 4):
                        tmp4[st * GROUP + ri] = u4[st]
                    for f in range(widths.shape[0]):
                        wd = widths[f]
                        at = base + weight_bytes + dst[f] + ri * wd
                        for k in range(wd):
                            qg[at + k] = rec[src[f] + k]
                pack(tmp, qg, base, nsteps)

    return repack


CHUNK_BYTES = 1 << 23   # repack this much of the GGUF bytes at a time


def _fields(lay: Layout):
    widths = np.array(lay.scales.fields(lay.n_sub), np.int64)
    src = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    return widths, src, GROUP * src


def repack(rows: np.ndarray, qtype: QuantType, n_rows: int, n_cols: int, done=None) -> np.ndarray:
    """q for validated block rows (QuantMatrix checked the byte counts); done(chunk_rows) is
    called after each chunk of rows."""
    lay = layout_of(qtype)
    groups = -(-n_rows // GROUP)
    q = np.zeros((groups, n_cols // lay.block * lay.block_bytes), np.uint8)
    widths, src, dst = _fields(lay)
    kernel = repack_kernel(qtype)
    step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * GROUP))   # groups per chunk
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        chunk = rows[g0 * GROUP:min(n_rows, g1 * GROUP)]
        kernel(chunk, q[g0:g1], widths, src, dst)
        if done is not None:
            done(chunk)
    return q
