"""The i-quant grid types at the file's bit count: a resident layout and in-register decoders.

IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S and IQ1_M store, per group of 8 (IQ2, IQ1) or 4
(IQ3) weights, an index into a codebook of 8- or 4-byte grid points, sign bits apart (IQ2, IQ3),
and a small scale code per sub-block of 16 or 32 weights under one float16 scale per 256. Here
they keep that: the grid indices with their bit count, one sign bit per weight, the 4-bit scale
codes and the float16 scale; the kernels look the grid points up in registers (one gather of 16
table entries, one per row) in tables built from the gguf package's grids at import.

As for every quantized type, a weight is w = scale * (u - OFF) with u an unsigned byte, so that
vpdpbusd multiplies u by int8 activations and the kernel takes OFF * sum(x) off (packed.py):

    type      u                               OFF  scale of a sub-block (c: its 4-bit code)
    IQ2_*     64 +- grid (8, 25, 43)           64  d (c + 1/2) / 4    (sub-blocks of 32 / 16 / 16)
    IQ3_XXS   64 +- grid (4, 12, ..., 62)      64  d (c + 1/2) / 2    (32)
    IQ3_S     16 +- grid (1, 3, ..., 15)       16  d (2 c + 1)         (32)
    IQ1_S/M   16 + 8 grid +- 1 (grid -1, 0, 1)  16  d (c + 1/2) / 4    (32 / 16; u in units of d (2c + 1) / 8)

The tables hold the bytes OFF + |grid| (IQ1: 16 + 8 grid + 1, or - 1 where the delta is
negative, the delta's sign being a 12th index bit), so that a negative sign makes u = 2 OFF - t:
one masked byte subtraction.

Layout, per block of 256 columns of a group of 16 rows (layout.py: the weights, then the scale
fields of scale_codes.py's f16_nib_* encodings). An "entry" is one grid index per row, for 8
columns (IQ2, IQ1: 32 entries) or 4 (IQ3: 64):

    IDX  16 bytes per entry: byte r = the low 8 bits of row r's index
    HI   the index bits above 8 (H = 1, 2 or 4 of them), 8 / H entries to a byte: entry e's bits
         sit in 16-byte chunk e // (8 / H), byte r, from bit H * (e % (8 / H))
    SGN  8 bytes per step (4 columns; what one vpdpbusd multiplies): bit 4 r + c = the sign of
         row r, column c (IQ2_XXS, IQ2_XS and IQ3_XXS store 7 of 8 sign bits, the 8th following
         from even parity: all 8 are kept here, 1/8 bit per weight more than the file)
  then the scales:
    D    16 float16: each row's scale d
    SC   per 8 sub-blocks, a 64-byte vector whose i32 lane r holds row r's 8 codes, sub-block k
         in bits 4k .. 4k + 3

    type     H  signs  sub-blocks  bytes  file's bytes (16 rows x 256 columns)
    IQ2_XXS  0  yes     8 x 32     1120   1056  (1.061x)
    IQ2_XS   1  yes    16 x 16     1248   1184  (1.054x)
    IQ2_S    2  yes    16 x 16     1312   1312  (1.000x)
    IQ3_XXS  0  yes     8 x 32     1632   1568  (1.041x)
    IQ3_S    1  yes     8 x 32     1760   1760  (1.000x)
    IQ1_S    4  no      8 x 32      864    800  (1.080x: the delta's sign per 8, codes of 3 bits in 4)
    IQ1_M    4  no     16 x 16      928    896  (1.036x)

The unpackers (quant/formats/grid_codes.py) hand over a byte per weight with its sign and its
entry's index spread over the entry's first two weights; `pack` builds IDX, HI and SGN from
them. The decoders (weight_codes.py's interface): `pair` yields two consecutive steps (16 rows
x 4 columns of u, 64 bytes, lane r = row r) from one lookup per row, `step` one of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit

from lowbit.quant.tables import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID

from .layout import GROUP
from .simd import (and_i32x16, gather_u32, gather_u32_generic, gather_u64, gather_u64_generic, load_u8x16,
                   load_u64, or_i32x16, pick_i32x16, select_bytes, shift_i32x16, splat_i32, sub_i8x64)
from .weight_codes import WeightCode

BLOCK = 256     # columns per block: the grid types' only block size


# -- tables --------------------------------------------------------------------------------

def _bytes_table(grid: np.ndarray, off: int, dtype) -> np.ndarray:
    """Each grid point as the bytes off + value, read as one uint32 (4 values) or uint64 (8)."""
    b = (grid.astype(np.int64) + off).astype(np.uint8)
    return np.ascontiguousarray(b).view(dtype).reshape(-1).copy()


def _iq1_table() -> np.ndarray:
    """IQ1 grid points as 16 + 8 grid + 1 (index bit 11 clear) or - 1 (set: a negative delta)."""
    g = IQ1S_GRID.astype(np.int64) * 8 + 16
    return _bytes_table(np.concatenate([g + 1, g - 1]), 0, np.uint64)


IQ2XXS_TABLE = _bytes_table(IQ2XXS_GRID, 64, np.uint64)     # 256 entries
IQ2XS_TABLE = _bytes_table(IQ2XS_GRID, 64, np.uint64)       # 512
IQ2S_TABLE = _bytes_table(IQ2S_GRID, 64, np.uint64)         # 1024
IQ3XXS_TABLE = _bytes_table(IQ3XXS_GRID, 64, np.uint32)     # 256
IQ3S_TABLE = _bytes_table(IQ3S_GRID, 16, np.uint32)         # 512
IQ1_TABLE = _iq1_table()                                    # 4096


# -- codes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridCode:
    name: str
    cols: int            # columns per entry (grid index): 8 or 4
    hbits: int           # index bits above the low 8
    signs: bool
    offset: int          # OFF: the table's bytes are OFF + |grid|
    table: np.ndarray

    @property
    def entries(self) -> int:
        return BLOCK // self.cols

    @property
    def hi_at(self) -> int:
        return 16 * self.entries

    @property
    def sgn_at(self) -> int:
        return self.hi_at + 2 * self.entries * self.hbits

    @property
    def weight_bytes(self) -> int:
        return self.sgn_at + (BLOCK * GROUP // 8 if self.signs else 0)


GRIDS = {c.name: c for c in (
    GridCode("iq2_xxs", 8, 0, True, 64, IQ2XXS_TABLE),
    GridCode("iq2_xs", 8, 1, True, 64, IQ2XS_TABLE),
    GridCode("iq2_s", 8, 2, True, 64, IQ2S_TABLE),
    GridCode("iq3_xxs", 4, 0, True, 64, IQ3XXS_TABLE),
    GridCode("iq3_s", 4, 1, True, 16, IQ3S_TABLE),
    GridCode("iq1_s", 8, 4, False, 16, IQ1_TABLE),
    GridCode("iq1_m", 8, 4, False, 16, IQ1_TABLE),
)}


# -- packing (at load) -----------------------------------------------------------------------

@njit(inline="always")
def _pack(tmp, q, base, cols, entries, hbits, sgn_at, signs):
    """One block of a group from the unpackers' bytes, laid out in steps in tmp (byte 64 s +
    4 r + c = row r, column 4 s + c): IDX, HI and SGN from q[base]."""
    hi_at = 16 * entries
    for e in range(entries):
        first = e * cols // 4 * 64      # the entry's first weight (row 0) in tmp
        for r in range(GROUP):
            index = (tmp[first + 4 * r] >> 1) | ((tmp[first + 4 * r + 1] >> 1) << 7)
            q[base + 16 * e + r] = index & 255
            if hbits:
                per = 8 // hbits
                q[base + hi_at + 16 * (e // per) + r] |= (index >> 8) << (hbits * (e % per))
    if signs:
        for s in range(BLOCK // 4):
            for r in range(GROUP):
                b = 0
                for c in range(4):
                    b |= (tmp[64 * s + 4 * r + c] & 1) << c
                q[base + sgn_at + 8 * s + r // 2] |= b << (4 * (r % 2))


# -- in-register decoders ----------------------------------------------------------------------

@njit(inline="always")
def _index(q, base, e, hi_at, hbits):
    """The 16 rows' grid indices of entry e of the block at `base`, one per i32 lane."""
    v = load_u8x16(q, base + 16 * e)
    if hbits == 0:
        return v
    per = 8 // hbits
    hi = load_u8x16(q, base + hi_at + 16 * (e // per))
    return or_i32x16(v, and_i32x16(shift_i32x16(hi, 8 - hbits * (e % per)), splat_i32(((1 << hbits) - 1) << 8)))


@njit(inline="always")
def _signed(q, at, t, neg):
    """t with the bytes whose sign bit (the 64-bit word at byte `at`) is set replaced by neg - t."""
    return select_bytes(load_u64(q, at), sub_i8x64(neg, t), t)


@njit(inline="always")
def _pair8(q, base, s, table, hi_at, hbits, sgn_at, off, native):
    """Steps s, s + 1 (s even: columns 4s .. 4s + 7) for 8-byte grid entries: two 8-row
    gathers, then the first and the second 4 bytes of each entry (IQ2_*, IQ1_*)."""
    idx = _index(q, base, s >> 1, hi_at, hbits)
    if native:
        a = gather_u64(table, idx, 0)
        b = gather_u64(table, idx, 1)
    else:
        a = gather_u64_generic(table, idx, 0)
        b = gather_u64_generic(table, idx, 1)
    t0 = pick_i32x16(a, b, 0)
    t1 = pick_i32x16(a, b, 1)
    if sgn_at < 0:
        return t0, t1
    neg = splat_i32(0x01010101 * 2 * off)
    return _signed(q, base + sgn_at + 8 * s, t0, neg), _signed(q, base + sgn_at + 8 * s + 8, t1, neg)


@njit(inline="always")
def _step4(q, base, s, table, hi_at, hbits, sgn_at, native):
    """Step s for 4-byte grid entries (IQ3_*): one 16-row gather."""
    idx = _index(q, base, s, hi_at, hbits)
    t = gather_u32(table, idx) if native else gather_u32_generic(table, idx)
    return t, base + sgn_at + 8 * s


@njit(inline="always")
def _pair4(q, base, s, table, hi_at, hbits, sgn_at, off, native):
    t0, at0 = _step4(q, base, s, table, hi_at, hbits, sgn_at, native)
    t1, at1 = _step4(q, base, s + 1, table, hi_at, hbits, sgn_at, native)
    neg = splat_i32(0x01010101 * 2 * off)
    return _signed(q, at0, t0, neg), _signed(q, at1, t1, neg)


@lru_cache(maxsize=None)
def grid_code(name: str, native: bool = True) -> WeightCode:
    """The weight encoding of a grid type (GRIDS); native=False: the gathers as scalar loads,
    as on a CPU without AVX-512 (the tests hold the two equal)."""
    code = GRIDS[name]
    table, hi_at, hbits, off = code.table, code.hi_at, code.hbits, code.offset
    sgn_at = code.sgn_at if code.signs else -1
    cols, entries, signs = code.cols, code.entries, code.signs
    pair_fn = _pair8 if cols == 8 else _pair4

    @njit(inline="always")
    def pair(q, base, nsteps, s):
        return pair_fn(q, base, s, table, hi_at, hbits, sgn_at, off, native)

    @njit(inline="always")
    def step(q, base, nsteps, s):
        w = pair(q, base, nsteps, s & ~1)
        return w[s & 1]

    @njit(inline="always")
    def pack(tmp, q, base, nsteps):
        _pack(tmp, q, base, cols, entries, hbits, sgn_at, signs)

    assert code.weight_bytes % (BLOCK // 4) == 0
    return WeightCode(name, code.weight_bytes // (BLOCK // 4), BLOCK // 4, step, pack, pair)


GRID_CODES = {name: grid_code(name) for name in GRIDS}
