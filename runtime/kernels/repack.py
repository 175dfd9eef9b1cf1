"""Repacking a quantized tensor at load into the layout the int8 kernels read.

Every quantized type here is, per sub-block of SB weights (16 or 32) of a row, an affine
image of small unsigned integers:  w = scale * u - min,  u in 0..255.  The unpackers below
read the GGUF blocks (bit for bit as the exact decoders of quant/formats do) and produce u,
scale and min; the kernels multiply u by int8 activations with integer dot products.

    symmetric types (min = OFF * scale, OFF a constant of the type, u = q + OFF):
        Q4_0 (OFF 8), Q5_0 (16), Q8_0 (128), Q3_K (4), Q6_K (32), IQ4_NL/XS (128),
        IQ2_* (64), IQ3_XXS (64), IQ3_S (16), IQ1_S/M (16, in units of scale/8), TQ1_0/TQ2_0 (1),
        MXFP4 (12)
        the kernel subtracts OFF * sum(qx) from the integer dot: exact, and no min array.
    affine types (min stored): Q4_1, Q5_1 (min = -m), Q2_K, Q4_K, Q5_K (min = dmin * m)

The grid and table types (IQ*, TQ*, MXFP4) are unpacked through their exact decoder: decode
the block, then u = round(w / unit) + OFF with unit the sub-block's scale; w is an integer
multiple of unit (tested: scale * u - min equals the decoded weights).

Layout of an (n_rows x n_cols) matrix, rows taken in groups of 16 (the last group padded
with zero rows), G = ceil(n_rows / 16):

    q     uint8 [G, n_cols * 16]      for each 4 columns k..k+3: 16 rows x 4 bytes (64 bytes,
                                      one zmm: lane i holds u[row i, k..k+3], what vpdpbusd
                                      multiplies by 4 activation bytes)
    scale f32   [G, n_cols / SB * 16] per sub-block, the 16 rows' scales
    min   f32   [G, n_cols / SB * 16] (affine types only; an empty array otherwise)

Memory: the weight bytes of the format (below: 1, 0.5 or 0.5 + 1/8 or 1/4 per weight), plus
per SB weights 4 bytes of scale (2 for the types whose scale is a float16 of the file: Q4_0,
Q5_0, Q8_0, IQ4_NL, TQ1_0, TQ2_0) and, for affine types, 4 of min.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit, prange

from lowbit.quant.bits import f16, packed_nibble, u32
from lowbit.quant.formats.iq1 import decode_iq1_m, decode_iq1_s, iq1m_d, iq1m_scale, iq1s_scale
from lowbit.quant.formats.iq2 import decode_iq2_s, decode_iq2_xs, decode_iq2_xxs, iq2_scale
from lowbit.quant.formats.iq3 import decode_iq3_s, decode_iq3_xxs, iq3xxs_scale
from lowbit.quant.formats.iq4 import decode_iq4_nl, decode_iq4_xs, iq4xs_scale
from lowbit.quant.formats.kquants import crumb, high_bit, nibble, q3k_scale, scale_min_k4
from lowbit.quant.formats.mxfp4 import decode_mxfp4, e8m0_half
from lowbit.quant.formats.ternary import decode_tq1_0, decode_tq2_0
from lowbit.quant.jit_cache import cached_kernel
from lowbit.quant.types import QuantType

GROUP = 16  # rows per group: the lanes of one vector


# -- the legacy 32-weight types ---------------------------------------------------------------
# unpack_X(w, o, u, sc, mn, y): the block at byte o of row w -> u[block_size], sc and mn per
# sub-block; y is a float scratch buffer of block_size (used by the table types).

@njit(inline="always")
def _nibbles16(w, at, u):
    for j in range(16):
        b = w[at + j]
        u[j] = b & 15
        u[j + 16] = b >> 4


@njit(inline="always")
def _fifth_bits(w, at, u):
    qh = u32(w, at)
    for j in range(32):
        u[j] |= ((qh >> j) & 1) << 4


@njit(inline="always")
def unpack_q4_0(w, o, u, sc, mn, y):
    sc[0] = f16(w, o)
    _nibbles16(w, o + 2, u)


@njit(inline="always")
def unpack_q4_1(w, o, u, sc, mn, y):
    sc[0] = f16(w, o)
    mn[0] = -f16(w, o + 2)
    _nibbles16(w, o + 4, u)


@njit(inline="always")
def unpack_q5_0(w, o, u, sc, mn, y):
    sc[0] = f16(w, o)
    _nibbles16(w, o + 6, u)
    _fifth_bits(w, o + 2, u)


@njit(inline="always")
def unpack_q5_1(w, o, u, sc, mn, y):
    sc[0] = f16(w, o)
    mn[0] = -f16(w, o + 2)
    _nibbles16(w, o + 8, u)
    _fifth_bits(w, o + 4, u)


@njit(inline="always")
def unpack_q8_0(w, o, u, sc, mn, y):
    sc[0] = f16(w, o)
    for j in range(32):
        u[j] = w[o + 2 + j] ^ 128   # int8 q + 128


# -- k-quants ------------------------------------------------------------------------------

@njit(inline="always")
def unpack_q2_k(w, o, u, sc, mn, y):
    d = f16(w, o + 80)
    dmin = f16(w, o + 82)
    for s in range(16):
        b = w[o + s]
        sc[s] = d * np.float32(b & 15)
        mn[s] = dmin * np.float32(b >> 4)
    for i in range(256):
        u[i] = crumb(w, o + 16, i)


@njit(inline="always")
def unpack_q3_k(w, o, u, sc, mn, y):
    d = f16(w, o + 108)
    for s in range(16):
        sc[s] = d * np.float32(q3k_scale(w, o + 96, s))
    for i in range(256):
        u[i] = crumb(w, o + 32, i) + 4 * high_bit(w, o, i)   # q + 4, q = low2 - 4 * (1 - hbit)


@njit(inline="always")
def _q45_k_scales(w, o, sc, mn):
    d = f16(w, o)
    dmin = f16(w, o + 2)
    for s in range(8):
        a, m = scale_min_k4(w, o + 4, s)
        sc[s] = d * np.float32(a)
        mn[s] = dmin * np.float32(m)


@njit(inline="always")
def unpack_q4_k(w, o, u, sc, mn, y):
    _q45_k_scales(w, o, sc, mn)
    for i in range(256):
        u[i] = nibble(w, o + 16, i)


@njit(inline="always")
def unpack_q5_k(w, o, u, sc, mn, y):
    _q45_k_scales(w, o, sc, mn)
    for i in range(256):
        u[i] = nibble(w, o + 48, i) | (high_bit(w, o + 16, i) << 4)


@njit(inline="always")
def unpack_q6_k(w, o, u, sc, mn, y):
    d = f16(w, o + 208)
    for s in range(16):
        sc[s] = d * np.float32(np.int8(w[o + 192 + s]))
    for i in range(256):
        half, r = divmod(i, 128)
        lo = (w[o + half * 64 + r % 64] >> (4 * (r // 64))) & 15
        u[i] = lo | (crumb(w, o + 128, i) << 4)   # q + 32


# -- table and grid types: exact decode, then divide by the sub-block's unit ---------------------

@njit(inline="always")
def _by_units(y, u, sc, sb, off):
    """u = round(y / sc[sub]) + off for each weight; sc holds each sub-block's unit."""
    for s in range(sc.shape[0]):
        unit = sc[s]
        for i in range(s * sb, s * sb + sb):
            v = y[i] / unit if unit != 0 else np.float32(0.0)
            if not abs(v) < 200:   # only in a corrupt block (inf/nan scales)
                v = np.float32(0.0)
            u[i] = np.uint8(min(255, max(0, int(np.rint(v)) + off)))


@njit(inline="always")
def unpack_iq4_nl(w, o, u, sc, mn, y):
    decode_iq4_nl(w, o, y)
    sc[0] = f16(w, o)
    _by_units(y, u, sc, 32, 128)


@njit(inline="always")
def unpack_iq4_xs(w, o, u, sc, mn, y):
    decode_iq4_xs(w, o, y)
    d = f16(w, o)
    for ib in range(8):
        sc[ib] = d * np.float32(iq4xs_scale(w, o, ib))
    _by_units(y, u, sc, 32, 128)


@njit(inline="always")
def unpack_iq2_xxs(w, o, u, sc, mn, y):
    decode_iq2_xxs(w, o, y)
    d = f16(w, o)
    for ib in range(8):
        sc[ib] = iq2_scale(d, u32(w, o + 2 + 8 * ib + 4) >> 28)
    _by_units(y, u, sc, 32, 64)


@njit(inline="always")
def unpack_iq2_xs(w, o, u, sc, mn, y):
    decode_iq2_xs(w, o, y)
    d = f16(w, o)
    for j in range(16):
        sc[j] = iq2_scale(d, packed_nibble(w, o + 66, j))
    _by_units(y, u, sc, 16, 64)


@njit(inline="always")
def unpack_iq2_s(w, o, u, sc, mn, y):
    decode_iq2_s(w, o, y)
    d = f16(w, o)
    for j in range(16):
        sc[j] = iq2_scale(d, packed_nibble(w, o + 74, j))
    _by_units(y, u, sc, 16, 64)


@njit(inline="always")
def unpack_iq3_xxs(w, o, u, sc, mn, y):
    decode_iq3_xxs(w, o, y)
    d = f16(w, o)
    for ib in range(8):
        sc[ib] = iq3xxs_scale(d, u32(w, o + 66 + 4 * ib))
    _by_units(y, u, sc, 32, 64)


@njit(inline="always")
def unpack_iq3_s(w, o, u, sc, mn, y):
    decode_iq3_s(w, o, y)
    d = f16(w, o)
    for j in range(8):
        sc[j] = d * np.float32(1 + 2 * packed_nibble(w, o + 106, j))
    _by_units(y, u, sc, 32, 16)


@njit(inline="always")
def unpack_iq1_s(w, o, u, sc, mn, y):
    # w = dl * (grid + delta) with delta = +-1/8: integers in units of dl / 8
    decode_iq1_s(w, o, y)
    d = f16(w, o)
    for ib in range(8):
        sc[ib] = d * np.float32(iq1s_scale(w, o, ib)) * np.float32(0.125)
    _by_units(y, u, sc, 32, 16)


@njit(inline="always")
def unpack_iq1_m(w, o, u, sc, mn, y):
    decode_iq1_m(w, o, y)
    d = iq1m_d(w, o)
    for j in range(16):
        sc[j] = d * np.float32(iq1m_scale(w, o, j)) * np.float32(0.125)
    _by_units(y, u, sc, 16, 16)


@njit(inline="always")
def unpack_tq1_0(w, o, u, sc, mn, y):
    decode_tq1_0(w, o, y)
    d = f16(w, o + 52)
    for j in range(8):
        sc[j] = d
    _by_units(y, u, sc, 32, 1)


@njit(inline="always")
def unpack_tq2_0(w, o, u, sc, mn, y):
    decode_tq2_0(w, o, y)
    d = f16(w, o + 64)
    for j in range(8):
        sc[j] = d
    _by_units(y, u, sc, 32, 1)


@njit(inline="always")
def unpack_mxfp4(w, o, u, sc, mn, y):
    decode_mxfp4(w, o, y)
    sc[0] = e8m0_half(int(w[o]))
    _by_units(y, u, sc, 32, 12)


# Weight formats: how the u of one group of 16 rows are stored, per sub-block of SB columns
# (a "step" is 4 columns: 64 bytes, byte 4 i + j = u[row i, column 4 s + j]):
U8, NIB4, NIB5, NIB6 = 0, 1, 2, 3
#   U8    u < 256: one byte per weight, the steps one after the other (SB / 4 x 64 bytes)
#   NIB4  u < 16: steps in pairs, one 64-byte vector per pair: low nibble step 2m, high 2m + 1
#   NIB5  u < 32, SB = 32: NIB4's 4 vectors, then 64 bytes of fifth bits: bit s of byte L is
#         bit 4 of step s's byte L
#   NIB6  u < 64, SB = 16: NIB4's 2 vectors, then 64 bytes of bits 4-5: bits 2s, 2s + 1 of
#         byte L are bits 4, 5 of step s's byte L
def sub_bytes(fmt: int, sub: int) -> int:
    """Bytes of one sub-block (SB columns) of one group of 16 rows."""
    return {U8: 16 * sub, NIB4: 8 * sub, NIB5: 8 * sub + 64, NIB6: 8 * sub + 64}[fmt]


@dataclass(frozen=True)
class Unpacking:
    sub: int            # SB: weights per scale
    offset: int         # OFF for symmetric types (min = OFF * scale); -1: affine, min stored
    unpack: object      # the njit unpacker
    fmt: int = U8       # weight format (the largest u decides; see above)
    half: bool = False  # scales kept as float16: the type's scale is a float16 of the file


    @property
    def affine(self) -> bool:
        return self.offset < 0


UNPACKING = {
    "Q4_0": Unpacking(32, 8, unpack_q4_0, NIB4, half=True),
    "Q4_1": Unpacking(32, -1, unpack_q4_1, NIB4),
    "Q5_0": Unpacking(32, 16, unpack_q5_0, NIB5, half=True),
    "Q5_1": Unpacking(32, -1, unpack_q5_1, NIB5),
    "Q8_0": Unpacking(32, 128, unpack_q8_0, U8, half=True),
    "Q2_K": Unpacking(16, -1, unpack_q2_k, NIB4),
    "Q3_K": Unpacking(16, 4, unpack_q3_k, NIB4),
    "Q4_K": Unpacking(32, -1, unpack_q4_k, NIB4),
    "Q5_K": Unpacking(32, -1, unpack_q5_k, NIB5),
    "Q6_K": Unpacking(16, 32, unpack_q6_k, NIB6),
    "IQ4_NL": Unpacking(32, 128, unpack_iq4_nl, U8, half=True),     # u = table value + 128
    "IQ4_XS": Unpacking(32, 128, unpack_iq4_xs, U8),
    "IQ2_XXS": Unpacking(32, 64, unpack_iq2_xxs, U8),    # u in 21 .. 107
    "IQ2_XS": Unpacking(16, 64, unpack_iq2_xs, U8),
    "IQ2_S": Unpacking(16, 64, unpack_iq2_s, U8),
    "IQ3_XXS": Unpacking(32, 64, unpack_iq3_xxs, U8),    # u in 2 .. 126
    "IQ3_S": Unpacking(32, 16, unpack_iq3_s, NIB5),      # u in 1 .. 31
    "IQ1_S": Unpacking(32, 16, unpack_iq1_s, NIB5),      # u in 7 .. 25
    "IQ1_M": Unpacking(16, 16, unpack_iq1_m, NIB6),
    "TQ1_0": Unpacking(32, 1, unpack_tq1_0, NIB4, half=True),
    "TQ2_0": Unpacking(32, 1, unpack_tq2_0, NIB4, half=True),
    "MXFP4": Unpacking(32, 12, unpack_mxfp4, NIB5),      # u in 0 .. 24
}


def unpacking(qtype: QuantType) -> Unpacking | None:
    return UNPACKING.get(qtype.name)


@njit(inline="always")
def _emit(tmp, qg, n_sub, sub, fmt):
    """One group's u (tmp: the U8 layout, 16 * n_cols bytes) -> qg in format fmt."""
    steps = sub // 4
    sb = sub_bytes_nb(fmt, sub)
    for b in range(n_sub):
        src = b * steps * 64
        dst = b * sb
        if fmt == 0:
            for i in range(steps * 64):
                qg[dst + i] = tmp[src + i]
            continue
        for m in range(steps // 2):
            for i in range(64):
                lo = tmp[src + 2 * m * 64 + i] & 15
                hi = tmp[src + (2 * m + 1) * 64 + i] & 15
                qg[dst + m * 64 + i] = lo | (hi << 4)
        if fmt == 1:
            continue
        at = dst + steps // 2 * 64
        for i in range(64):
            v = 0
            for st in range(steps):
                if fmt == 2:
                    v |= ((tmp[src + st * 64 + i] >> 4) & 1) << st
                else:
                    v |= ((tmp[src + st * 64 + i] >> 4) & 3) << (2 * st)
            qg[at + i] = v


@njit(inline="always")
def sub_bytes_nb(fmt, sub):
    if fmt == 0:
        return 16 * sub
    if fmt == 1:
        return 8 * sub
    return 8 * sub + 64


@lru_cache(maxsize=None)
def repack_kernel(qtype: QuantType, spec: Unpacking):
    """repack(rows, n_cols, q, scale, mn): GGUF rows -> the grouped layout of `spec` (q sized
    for spec's format by repack(), scale and mn zero-filled)."""
    unpack = spec.unpack
    block_size, type_size, sub = qtype.block_size, qtype.type_size, spec.sub
    n_sub_block = block_size // sub
    affine = spec.affine
    fmt = spec.fmt

    @cached_kernel(parallel=True)
    def repack(rows, n_cols, q, scale, mn):
        n_rows = rows.shape[0]
        n_blocks = rows.shape[1] // type_size
        for g in prange(q.shape[0]):
            u = np.zeros(block_size, np.uint8)
            sc = np.zeros(n_sub_block, np.float32)
            m = np.zeros(n_sub_block, np.float32)
            y = np.zeros(block_size, np.float32)
            tmp = np.zeros(n_cols * GROUP, np.uint8)
            for ri in range(GROUP):
                r = g * GROUP + ri
                if r >= n_rows:
                    break
                row = rows[r]
                for bk in range(n_blocks):
                    unpack(row, bk * type_size, u, sc, m, y)
                    k0 = bk * block_size
                    for i in range(block_size):
                        k = k0 + i
                        tmp[(k >> 2) * 64 + ri * 4 + (k & 3)] = u[i]
                    for j in range(n_sub_block):
                        at = (bk * n_sub_block + j) * GROUP + ri
                        scale[g, at] = sc[j]
                        if affine:
                            mn[g, at] = m[j]
            _emit(tmp, q[g], n_cols // sub, sub, fmt)

    return repack


CHUNK_BYTES = 1 << 23   # repack this much of the GGUF bytes at a time (see repack)


def repack(rows: np.ndarray, qtype: QuantType, n_rows: int, n_cols: int, done=None):
    """(q, scale, mn) for validated block rows (QuantMatrix checked the byte counts).

    Works through the rows in chunks of about CHUNK_BYTES and calls done(chunk_rows) after each,
    so that the caller can release the source pages as it goes: the GGUF bytes of a large
    matrix and its repacked copy are never resident together in full."""
    spec = UNPACKING[qtype.name]
    groups = -(-n_rows // GROUP)
    n_scales = n_cols // spec.sub * GROUP
    q = np.empty((groups, n_cols // spec.sub * sub_bytes(spec.fmt, spec.sub)), np.uint8)
    scale = np.zeros((groups, n_scales), np.uint16 if spec.half else np.float32)
    mn = np.zeros((groups, n_scales) if spec.affine else (groups, 0), np.float32)
    kernel = repack_kernel(qtype, spec)
    step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * GROUP))   # groups per chunk
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        chunk = rows[g0 * GROUP:min(n_rows, g1 * GROUP)]
        if spec.half:    # the scales are float16 values of the file: the conversion is exact
            sc32 = np.zeros((g1 - g0, n_scales), np.float32)
            kernel(chunk, n_cols, q[g0:g1], sc32, mn[g0:g1])
            scale[g0:g1] = sc32.astype(np.float16).view(np.uint16)
        else:
            kernel(chunk, n_cols, q[g0:g1], scale[g0:g1], mn[g0:g1])
        if done is not None:
            done(chunk)
    return q, scale, mn


def scales_f32(scale: np.ndarray) -> np.ndarray:
    """The scales of a repacked matrix as float32 (they may be kept as float16 bits)."""
    return scale.view(np.float16).astype(np.float32) if scale.dtype == np.uint16 else scale


def expand_u8(q: np.ndarray, fmt: int, sub: int, n_cols: int) -> np.ndarray:
    """The u of packed weights back in the U8 layout [G, 16 * n_cols] (numpy; for tests)."""
    groups = q.shape[0]
    steps = sub // 4
    blocks = q.reshape(groups, n_cols // sub, sub_bytes(fmt, sub))
    if fmt == U8:
        return blocks.reshape(groups, -1).copy()
    nib = blocks[:, :, :steps // 2 * 64].reshape(groups, -1, steps // 2, 64)
    u = np.empty((groups, n_cols // sub, steps, 64), np.uint8)
    u[:, :, 0::2] = nib & 15
    u[:, :, 1::2] = nib >> 4
    if fmt in (NIB5, NIB6):
        high = blocks[:, :, steps // 2 * 64:]
        for st in range(steps):
            bits = (high >> st) & 1 if fmt == NIB5 else (high >> (2 * st)) & 3
            u[:, :, st] |= (bits << 4).astype(np.uint8)
    return u.reshape(groups, -1)
