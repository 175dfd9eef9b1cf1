"""The i-quant grid types at the file's bit count: a repacked layout and in-register decoders.

IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S and IQ1_M store, per group of 8 (IQ2, IQ1) or 4
(IQ3) weights, an index into a codebook of 8- or 4-byte grid points, sign bits apart (IQ2, IQ3),
and a small scale code per sub-block of 16 or 32 weights under one float16 scale per 256. Here
they keep that: the grid indices with their bit count, one sign bit per weight, the 4-bit scale
codes and the float16 scale; the kernels look the grid points up in registers (one gather of 16
table entries, one per row) from tables built from the gguf package's grids at import.

As for every quantized type, a weight is w = scale * (u - OFF) with u a small unsigned byte, so
that vpdpbusd multiplies u by int8 activations and the kernel takes OFF * sum(x) off (packed.py):

    type      u                              OFF  scale of a sub-block (c: its 4-bit code)
    IQ2_*     64 +- grid (8, 25, 43)          64  d (c + 1/2) / 4     (sub-blocks of 32 / 16 / 16)
    IQ3_XXS   64 +- grid (4, 12, ..., 62)     64  d (c + 1/2) / 2     (32)
    IQ3_S     16 +- grid (1, 3, ..., 15)      16  d (2 c + 1)          (32)
    IQ1_S/M   16 + 8 grid +- 1 (grid -1, 0, 1) 16  d (2 c + 1) / 8     (32 / 16; u in units of 1/8)

The tables hold the bytes OFF + |grid| (IQ1: 16 + 8 grid + 1 or - 1, the delta's sign being a
12th index bit), so that a negative sign makes u = 2 OFF - t: one masked byte subtraction.

Layout: rows in groups of 16 (the lanes of a vector), and per group one record of REC bytes for
each 256 columns (a super-block), records one after the other: q uint8 [G, n_cols / 256 * REC].
An "entry" is one grid index per row: for 8 columns (IQ2, IQ1) or 4 (IQ3), 32 or 64 per record.

    IDX  16 bytes per entry: byte r = the low 8 bits of row r's index
    HI   the index bits above 8 (H = 1, 2 or 4 of them), 8 / H entries to a byte: entry e's bits
         sit in 16-byte chunk e // (8 / H), byte r, from bit H * (e % (8 / H))
    SGN  8 bytes per 4 columns (a "step": 16 rows x 4 columns, what one vpdpbusd multiplies):
         bit 4 r + c = sign of row r, column c (IQ2_XXS, IQ2_XS, IQ3_XXS store 7 of 8 sign bits,
         the 8th following from even parity: here all 8 are kept, 1/8 bit per weight more)
    SC   the scale codes, 4 bits each: per 8 sub-blocks one 64-byte vector whose i32 lane r holds
         row r's 8 codes, sub-block k in bits 4k .. 4k + 3
    D    16 float16: each row's super-block scale

    type     H  signs  sub-blocks  REC   file bytes (16 rows)
    IQ2_XXS  0  yes     8 x 32     1120  1056  (1.061x)
    IQ2_XS   1  yes    16 x 16     1248  1184  (1.054x)
    IQ2_S    2  yes    16 x 16     1312  1312  (1.000x)
    IQ3_XXS  0  yes     8 x 32     1632  1568  (1.041x)
    IQ3_S    1  yes     8 x 32     1760  1760  (1.000x)
    IQ1_S    4  no      8 x 32      864   800  (1.080x: the delta's sign is kept per 8, 3-bit codes take 4)
    IQ1_M    4  no     16 x 16      928   896  (1.036x)

Each type's decoder yields, for 8 columns (`pair`), the two step vectors of u (64 bytes each,
byte 4 r + c = u of row r, column c of the step), and for a sub-block (`sub_scales`) its 16
rows' scales as float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from lowbit.quant.bits import packed_nibble, u16, u32
from lowbit.quant.tables import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS

from .simd import (add_f32x16, and_i32x16, gather_u32, gather_u32_generic, gather_u64, gather_u64_generic,
                   load_bytes64, load_f16x16_at, load_u8x16, load_u64, mul_f32x16, or_i32x16, pick_i32x16,
                   select_bytes, shift_i32x16, splat_f32, splat_i32, sub_i8x64, to_f32x16)

GROUP = 16      # rows per group
SUPER = 256     # columns per record


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


# -- layouts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridLayout:
    name: str
    cols: int           # columns per entry (grid index): 8 or 4
    hbits: int          # index bits above the low 8
    signs: bool
    sub: int            # weights per scale code
    offset: int         # OFF
    scale_mul: float    # scale = d * (scale_mul * c + scale_add)
    scale_add: float

    @property
    def entries(self) -> int:
        return SUPER // self.cols

    @property
    def n_sub(self) -> int:
        return SUPER // self.sub

    @property
    def hi_at(self) -> int:
        return 16 * self.entries

    @property
    def sgn_at(self) -> int:
        return self.hi_at + 2 * self.entries * self.hbits

    @property
    def sc_at(self) -> int:
        return self.sgn_at + (SUPER * GROUP // 8 if self.signs else 0)

    @property
    def d_at(self) -> int:
        return self.sc_at + 8 * self.n_sub

    @property
    def record(self) -> int:
        return self.d_at + 2 * GROUP


LAYOUTS = {
    "IQ2_XXS": GridLayout("IQ2_XXS", 8, 0, True, 32, 64, 0.25, 0.125),
    "IQ2_XS": GridLayout("IQ2_XS", 8, 1, True, 16, 64, 0.25, 0.125),
    "IQ2_S": GridLayout("IQ2_S", 8, 2, True, 16, 64, 0.25, 0.125),
    "IQ3_XXS": GridLayout("IQ3_XXS", 4, 0, True, 32, 64, 0.5, 0.25),
    "IQ3_S": GridLayout("IQ3_S", 4, 1, True, 32, 16, 2.0, 1.0),
    "IQ1_S": GridLayout("IQ1_S", 8, 4, False, 32, 16, 0.25, 0.125),
    "IQ1_M": GridLayout("IQ1_M", 8, 4, False, 16, 16, 0.25, 0.125),
}


# -- reading the GGUF blocks: per 256 weights, the indices, the sign bytes (one per 8 weights,
# bit k = weight k), the scale codes and the float16 bits of d ------------------------------------

@njit(inline="always")
def parse_iq2_xxs(w, o, idx, sg, codes):
    for ib in range(8):
        at = o + 2 + 8 * ib
        aux = u32(w, at + 4)
        codes[ib] = aux >> 28
        for l in range(4):
            idx[4 * ib + l] = w[at + l]
            sg[4 * ib + l] = KSIGNS[(aux >> (7 * l)) & 127]
    return u16(w, o)


@njit(inline="always")
def parse_iq2_xs(w, o, idx, sg, codes):
    for i in range(32):
        q = u16(w, o + 2 + 2 * i)
        idx[i] = q & 511
        sg[i] = KSIGNS[q >> 9]
    for j in range(16):
        codes[j] = packed_nibble(w, o + 66, j)
    return u16(w, o)


@njit(inline="always")
def parse_iq2_s(w, o, idx, sg, codes):
    for i in range(32):
        idx[i] = w[o + 2 + i] | (((w[o + 66 + i // 4] >> (2 * (i % 4))) & 3) << 8)
        sg[i] = w[o + 34 + i]
    for j in range(16):
        codes[j] = packed_nibble(w, o + 74, j)
    return u16(w, o)


@njit(inline="always")
def parse_iq3_xxs(w, o, idx, sg, codes):
    for ib in range(8):
        aux = u32(w, o + 66 + 4 * ib)
        codes[ib] = aux >> 28
        for l in range(4):
            sg[4 * ib + l] = KSIGNS[(aux >> (7 * l)) & 127]
        for s in range(8):
            idx[8 * ib + s] = w[o + 2 + 8 * ib + s]
    return u16(w, o)


@njit(inline="always")
def parse_iq3_s(w, o, idx, sg, codes):
    for i in range(64):
        idx[i] = w[o + 2 + i] | (((w[o + 66 + i // 8] >> (i % 8)) & 1) << 8)
    for i in range(32):
        sg[i] = w[o + 74 + i]
    for j in range(8):
        codes[j] = packed_nibble(w, o + 106, j)
    return u16(w, o)


@njit(inline="always")
def parse_iq1_s(w, o, idx, sg, codes):
    # index bits 8-10 from qh, bit 11 the sign of the delta (shared by the 32 weights of qh)
    for ib in range(8):
        qh = u16(w, o + 34 + 2 * ib)
        codes[ib] = (qh >> 12) & 7
        for l in range(4):
            idx[4 * ib + l] = w[o + 2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8) | ((qh >> 15) << 11)
    return u16(w, o)


@njit(inline="always")
def parse_iq1_m(w, o, idx, sg, codes):
    # the 4 bits of qh per 8 weights are index bits 8-10 and the delta's sign, as the table wants
    for i in range(32):
        idx[i] = w[o + i] | (((w[o + 32 + i // 2] >> (4 * (i % 2))) & 15) << 8)
    for j in range(16):
        codes[j] = (u16(w, o + 48 + 2 * (j // 4)) >> (3 * (j % 4))) & 7
    sc0 = u16(w, o + 48)
    sc1 = u16(w, o + 50)
    sc2 = u16(w, o + 52)
    sc3 = u16(w, o + 54)
    return (sc0 >> 12) | ((sc1 >> 8) & 0xF0) | ((sc2 >> 4) & 0xF00) | (sc3 & 0xF000)


PARSERS = {"IQ2_XXS": parse_iq2_xxs, "IQ2_XS": parse_iq2_xs, "IQ2_S": parse_iq2_s,
           "IQ3_XXS": parse_iq3_xxs, "IQ3_S": parse_iq3_s, "IQ1_S": parse_iq1_s, "IQ1_M": parse_iq1_m}


# -- repacking -----------------------------------------------------------------------------

@njit(inline="always")
def _place(rec, r, idx, sg, codes, dbits, entries, hbits, sgn_at, sc_at, d_at, n_sub, signs):
    """Row r's parsed super-block into the record `rec` (a slice of one group's bytes)."""
    hi_at = 16 * entries
    for e in range(entries):
        rec[16 * e + r] = idx[e] & 255
        if hbits:
            per = 8 // hbits
            rec[hi_at + 16 * (e // per) + r] |= (idx[e] >> 8) << (hbits * (e % per))
    if signs:
        for e8 in range(32):
            for h in range(2):     # the two steps (4 columns each) of these 8 columns
                nib = (sg[e8] >> (4 * h)) & 15
                rec[sgn_at + 8 * (2 * e8 + h) + r // 2] |= nib << (4 * (r % 2))
    for k in range(n_sub):
        rec[sc_at + 64 * (k // 8) + 4 * r + (k % 8) // 2] |= codes[k] << (4 * (k % 2))
    rec[d_at + 2 * r] = dbits & 255
    rec[d_at + 2 * r + 1] = dbits >> 8


def repack_kernel(layout: GridLayout):
    """repack(rows, q): GGUF rows (n_rows, row bytes) -> q [G, n_super * REC], zero-filled."""
    return _repack_kernels[layout.name]


def _make_repack(layout: GridLayout, parse, type_size: int):
    entries, hbits, signs, n_sub = layout.entries, layout.hbits, layout.signs, layout.n_sub
    sgn_at, sc_at, d_at, rec_bytes = layout.sgn_at, layout.sc_at, layout.d_at, layout.record

    @njit(parallel=True)
    def repack(rows, q):
        n_rows = rows.shape[0]
        n_super = q.shape[1] // rec_bytes
        for g in prange(q.shape[0]):
            idx = np.zeros(entries, np.int64)
            sg = np.zeros(32, np.int64)
            codes = np.zeros(n_sub, np.int64)
            for r in range(GROUP):
                row = g * GROUP + r
                if row >= n_rows:
                    break
                for b in range(n_super):
                    dbits = parse(rows[row], b * type_size, idx, sg, codes)
                    rec = q[g, b * rec_bytes:(b + 1) * rec_bytes]
                    _place(rec, r, idx, sg, codes, dbits, entries, hbits, sgn_at, sc_at, d_at, n_sub, signs)

    return repack


_TYPE_SIZES = {"IQ2_XXS": 66, "IQ2_XS": 74, "IQ2_S": 82, "IQ3_XXS": 98, "IQ3_S": 110, "IQ1_S": 50, "IQ1_M": 56}
_repack_kernels = {n: _make_repack(LAYOUTS[n], PARSERS[n], _TYPE_SIZES[n]) for n in LAYOUTS}


def repack_grid(rows: np.ndarray, name: str, n_rows: int, n_cols: int) -> np.ndarray:
    """q [G, n_cols / 256 * REC] for validated block rows of a grid type."""
    layout = LAYOUTS[name]
    q = np.zeros((-(-n_rows // GROUP), n_cols // SUPER * layout.record), np.uint8)
    _repack_kernels[name](rows, q)
    return q


# -- in-register decoders --------------------------------------------------------------------

@njit(inline="always")
def _index(qg, base, e, hi_at, hbits):
    """The 16 rows' grid indices of entry e of the record at `base`, one per i32 lane."""
    v = load_u8x16(qg, base + 16 * e)
    if hbits == 0:
        return v
    per = 8 // hbits
    hi = load_u8x16(qg, base + hi_at + 16 * (e // per))
    return or_i32x16(v, and_i32x16(shift_i32x16(hi, 8 - hbits * (e % per)), splat_i32(((1 << hbits) - 1) << 8)))


@njit(inline="always")
def _signed(qg, at, t, neg):
    """t with the bytes whose sign bit (the 64-bit word at byte `at`) is set replaced by neg - t."""
    return select_bytes(load_u64(qg, at), sub_i8x64(neg, t), t)


@njit(inline="always")
def _pair8(qg, base, j, table, hi_at, hbits, sgn_at, off, native):
    """Steps 2j, 2j + 1 (columns 8j .. 8j + 7) for 8-byte grid entries: two 8-row gathers, then
    the first and the second 4 bytes of each entry (IQ2_*, IQ1_*)."""
    idx = _index(qg, base, j, hi_at, hbits)
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
    return _signed(qg, base + sgn_at + 16 * j, t0, neg), _signed(qg, base + sgn_at + 16 * j + 8, t1, neg)


@njit(inline="always")
def _pair4(qg, base, j, table, hi_at, hbits, sgn_at, off, native):
    """Steps 2j, 2j + 1 for 4-byte grid entries: one 16-row gather each (IQ3_*)."""
    i0 = _index(qg, base, 2 * j, hi_at, hbits)
    i1 = _index(qg, base, 2 * j + 1, hi_at, hbits)
    if native:
        t0 = gather_u32(table, i0)
        t1 = gather_u32(table, i1)
    else:
        t0 = gather_u32_generic(table, i0)
        t1 = gather_u32_generic(table, i1)
    neg = splat_i32(0x01010101 * 2 * off)
    return _signed(qg, base + sgn_at + 16 * j, t0, neg), _signed(qg, base + sgn_at + 16 * j + 8, t1, neg)


@njit(inline="always")
def _sub_scales(qg, base, k, sc_at, d_at, mul, add):
    """The 16 rows' scales of sub-block k of the record at `base`: d * (mul * code + add)."""
    codes = load_bytes64(qg, base + sc_at + 64 * (k // 8))
    c = to_f32x16(and_i32x16(shift_i32x16(codes, -4 * (k % 8)), splat_i32(15)))
    m = add_f32x16(mul_f32x16(c, splat_f32(np.float32(mul))), splat_f32(np.float32(add)))
    return mul_f32x16(m, load_f16x16_at(qg, base + d_at))


def _decoders(layout: GridLayout, table, pair_fn, native: bool):
    hi_at, hbits, off = layout.hi_at, layout.hbits, layout.offset
    sgn_at = layout.sgn_at if layout.signs else -1
    sc_at, d_at = layout.sc_at, layout.d_at
    mul, add = layout.scale_mul, layout.scale_add

    @njit(inline="always")
    def pair(qg, base, j):
        return pair_fn(qg, base, j, table, hi_at, hbits, sgn_at, off, native)

    @njit(inline="always")
    def sub_scales(qg, base, k):
        return _sub_scales(qg, base, k, sc_at, d_at, mul, add)

    return pair, sub_scales


_TABLES = {"IQ2_XXS": (IQ2XXS_TABLE, _pair8), "IQ2_XS": (IQ2XS_TABLE, _pair8), "IQ2_S": (IQ2S_TABLE, _pair8),
           "IQ3_XXS": (IQ3XXS_TABLE, _pair4), "IQ3_S": (IQ3S_TABLE, _pair4),
           "IQ1_S": (IQ1_TABLE, _pair8), "IQ1_M": (IQ1_TABLE, _pair8)}


def decoders(name: str, native: bool = True):
    """(pair, sub_scales) of a grid type: njit functions (qg, base, j) -> (step 2j, step 2j + 1)
    as i32x16 u bytes, and (qg, base, k) -> f32x16 scales of sub-block k; `base` is a record's
    first byte in the group's bytes qg. native=False: the gathers as scalar loads (any CPU)."""
    table, pair_fn = _TABLES[name]
    return _decoders(LAYOUTS[name], table, pair_fn, native)


# -- the product kernel (symmetric: w = scale * (u - OFF)) ----------------------------------------

from functools import lru_cache  # noqa: E402

from lowbit.quant.jit_cache import cached_kernel  # noqa: E402

from .simd import (add_i32x16, dot_u8s8, fma_f32x16, load1, load_f32x16, shl_i32x16, splat_bytes4,  # noqa: E402
                   store_bytes64, store_f32x16, sub_i32x16, zeros_f32x16, zeros_i32x16)

QBLOCK = 32
STEP = 254


@lru_cache(maxsize=None)
def grid_kernel(name: str, planes: int, native: bool = True):
    """kernel(q, scale, mn, offsets, qx, dx, isum, n_tokens, n_rows, out): out (T, N) = W x for a
    grid type's repacked W and P activation planes (packed.py's QuantizedActivations); the
    arguments are packed_kernel's, scale and mn unused (the scales are in q)."""
    layout = LAYOUTS[name]
    pair, sub_scales = decoders(name, native)
    rec, sub, n_sub_rec = layout.record, layout.sub, layout.n_sub
    pairs = sub // 8                # 8-column pairs of steps per sub-block
    halves = sub // 16
    lo = 1.0 / STEP ** 2
    key = f"{name} native={native}"  # in the numba cache key: the inlined decoders differ per type

    @njit(inline="always")
    def low_planes(i2, i3):
        v = sub_i32x16(shl_i32x16(i2, 8), shl_i32x16(i2, 1))
        return add_i32x16(v, i3) if planes >= 3 else v

    @njit(inline="always")
    def finish(acc, i1, i2, i3, scv, offv, tb, dsc, s1f, s23f):
        sd = mul_f32x16(scv, splat_f32(load1(dsc, tb)))
        v = fma_f32x16(offv, splat_f32(-load1(s1f, tb)), to_f32x16(i1))
        if planes >= 2:
            v23 = fma_f32x16(offv, splat_f32(-load1(s23f, tb)), to_f32x16(low_planes(i2, i3)))
            v = fma_f32x16(splat_f32(np.float32(lo)), v23, v)
        return fma_f32x16(sd, v, acc)

    @njit(inline="always")
    def put(out, t, g, n_rows, acc):
        r0 = g * GROUP
        if r0 + GROUP <= n_rows:
            store_f32x16(out, t * n_rows + r0, acc)
        else:
            buf = np.empty(GROUP, np.float32)
            store_f32x16(buf, 0, acc)
            for i in range(n_rows - r0):
                out[t * n_rows + r0 + i] = buf[i]

    @cached_kernel(parallel=True, fastmath=True)
    def kernel(q, scale, mn, offsets, qx, dx, isum, n_tokens, n_rows, out):
        assert len(key) > 0
        n_super = q.shape[1] // rec
        n_cols = n_super * SUPER
        n_sub = n_cols // sub
        n_tb = n_tokens * n_sub
        dsc = np.empty(n_tb, np.float32)
        s1f = np.empty(n_tb, np.float32)
        s23f = np.empty(n_tb, np.float32)
        for t in range(n_tokens):
            for b in range(n_sub):
                tb = t * n_sub + b
                at = t * (n_cols // 16) + b * halves
                s1 = isum[0, at]
                s23 = isum[1, at]
                if halves == 2:
                    s1 += isum[0, at + 1]
                    s23 += isum[1, at + 1]
                dsc[tb] = dx[t * (n_cols // QBLOCK) + (b * sub) // QBLOCK]
                s1f[tb] = np.float32(s1)
                s23f[tb] = np.float32(s23)
        p1 = qx[0]
        p2 = qx[min(1, planes - 1)]
        p3 = qx[min(2, planes - 1)]
        for g in prange(q.shape[0]):
            qg = q[g]
            offv = load_f32x16(offsets, g * GROUP)
            t = 0
            if n_tokens >= 4:
                # decode the group once into bytes and scales, then run the tokens over them
                tile = np.empty(n_cols * GROUP, np.uint8)
                sct = np.empty(n_sub * GROUP, np.float32)
                for sb in range(n_super):
                    base = sb * rec
                    for k in range(n_sub_rec):
                        store_f32x16(sct, (sb * n_sub_rec + k) * GROUP, sub_scales(qg, base, k))
                    for j in range(SUPER // 8):
                        w0, w1 = pair(qg, base, j)
                        at = (sb * SUPER + 8 * j) * GROUP
                        store_bytes64(tile, at, w0)
                        store_bytes64(tile, at + 64, w1)
                while t + 4 <= n_tokens:
                    a0 = zeros_f32x16()
                    a1 = zeros_f32x16()
                    a2 = zeros_f32x16()
                    a3 = zeros_f32x16()
                    x0 = t * n_cols
                    x1 = x0 + n_cols
                    x2 = x1 + n_cols
                    x3 = x2 + n_cols
                    for b in range(n_sub):
                        i0 = zeros_i32x16()
                        i1 = zeros_i32x16()
                        i2 = zeros_i32x16()
                        i3 = zeros_i32x16()
                        j0 = zeros_i32x16()
                        j1 = zeros_i32x16()
                        j2 = zeros_i32x16()
                        j3 = zeros_i32x16()
                        h0 = zeros_i32x16()
                        h1 = zeros_i32x16()
                        h2 = zeros_i32x16()
                        h3 = zeros_i32x16()
                        k0 = b * sub
                        for s in range(sub // 4):
                            k = k0 + 4 * s
                            wv = load_bytes64(tile, k * GROUP)
                            i0 = dot_u8s8(i0, wv, splat_bytes4(p1, x0 + k))
                            i1 = dot_u8s8(i1, wv, splat_bytes4(p1, x1 + k))
                            i2 = dot_u8s8(i2, wv, splat_bytes4(p1, x2 + k))
                            i3 = dot_u8s8(i3, wv, splat_bytes4(p1, x3 + k))
                            if planes >= 2:
                                j0 = dot_u8s8(j0, wv, splat_bytes4(p2, x0 + k))
                                j1 = dot_u8s8(j1, wv, splat_bytes4(p2, x1 + k))
                                j2 = dot_u8s8(j2, wv, splat_bytes4(p2, x2 + k))
                                j3 = dot_u8s8(j3, wv, splat_bytes4(p2, x3 + k))
                            if planes >= 3:
                                h0 = dot_u8s8(h0, wv, splat_bytes4(p3, x0 + k))
                                h1 = dot_u8s8(h1, wv, splat_bytes4(p3, x1 + k))
                                h2 = dot_u8s8(h2, wv, splat_bytes4(p3, x2 + k))
                                h3 = dot_u8s8(h3, wv, splat_bytes4(p3, x3 + k))
                        scv = load_f32x16(sct, b * GROUP)
                        tb = t * n_sub + b
                        a0 = finish(a0, i0, j0, h0, scv, offv, tb, dsc, s1f, s23f)
                        a1 = finish(a1, i1, j1, h1, scv, offv, tb + n_sub, dsc, s1f, s23f)
                        a2 = finish(a2, i2, j2, h2, scv, offv, tb + 2 * n_sub, dsc, s1f, s23f)
                        a3 = finish(a3, i3, j3, h3, scv, offv, tb + 3 * n_sub, dsc, s1f, s23f)
                    put(out, t, g, n_rows, a0)
                    put(out, t + 1, g, n_rows, a1)
                    put(out, t + 2, g, n_rows, a2)
                    put(out, t + 3, g, n_rows, a3)
                    t += 4
            while t < n_tokens:
                a0 = zeros_f32x16()
                x0 = t * n_cols
                for sb in range(n_super):
                    base = sb * rec
                    for kk in range(n_sub_rec):
                        i0 = zeros_i32x16()
                        i1 = zeros_i32x16()
                        j0 = zeros_i32x16()
                        h0 = zeros_i32x16()
                        for p in range(pairs):
                            jj = kk * pairs + p
                            k = x0 + sb * SUPER + 8 * jj
                            wa, wb = pair(qg, base, jj)
                            i0 = dot_u8s8(i0, wa, splat_bytes4(p1, k))
                            i1 = dot_u8s8(i1, wb, splat_bytes4(p1, k + 4))
                            if planes >= 2:
                                j0 = dot_u8s8(j0, wa, splat_bytes4(p2, k))
                                j0 = dot_u8s8(j0, wb, splat_bytes4(p2, k + 4))
                            if planes >= 3:
                                h0 = dot_u8s8(h0, wa, splat_bytes4(p3, k))
                                h0 = dot_u8s8(h0, wb, splat_bytes4(p3, k + 4))
                        scv = sub_scales(qg, base, kk)
                        a0 = finish(a0, add_i32x16(i0, i1), j0, h0, scv, offv, t * n_sub + sb * n_sub_rec + kk,
                                    dsc, s1f, s23f)
                put(out, t, g, n_rows, a0)
                t += 1

    return kernel
