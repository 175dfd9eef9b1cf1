"""The legacy 32-weight block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

block_q4_0 (32 w, 18 B): d f16 | qs u8[16]      w[j] = d*(lo(qs[j])-8), w[j+16] = d*(hi(qs[j])-8)
block_q4_1 (32 w, 20 B): d f16 | m f16 | qs u8[16]                  w = d*q + m
block_q5_0 (32 w, 22 B): d f16 | qh u32 | qs u8[16]   q = nibble | bit j of qh << 4; w = d*(q-16)
block_q5_1 (32 w, 24 B): d f16 | m f16 | qh u32 | qs u8[16]         w = d*q + m
block_q8_0 (32 w, 34 B): d f16 | qs i8[32]                          w = d*q
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, u32
from ..encode_helpers import nearest_int, put_f16, put_u32, round_to_f16
from ..types import Packing, register
from .unpacking import copy_f16, negated_f16, nibbles32
from .fits import affine_error, affine_lsq, affine_scratch, block_weights, fit_affine, fit_signed, signed_error


@njit(inline="always")
def decode_q4_0(w, o, y):
    d = f16(w, o)
    for j in range(16):
        b = w[o + 2 + j]
        y[j] = d * np.float32((b & 15) - 8)
        y[j + 16] = d * np.float32((b >> 4) - 8)


@njit(inline="always")
def decode_q4_1(w, o, y):
    d = f16(w, o)
    m = f16(w, o + 2)
    for j in range(16):
        b = w[o + 4 + j]
        y[j] = d * np.float32(b & 15) + m
        y[j + 16] = d * np.float32(b >> 4) + m


@njit(inline="always")
def _q5_values(w, qh_at, qs_at, j):
    """The two 5-bit quants (j and j+16) of a Q5 block, unsigned."""
    qh = u32(w, qh_at)
    b = w[qs_at + j]
    lo = (b & 15) | (((qh >> j) & 1) << 4)
    hi = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
    return lo, hi


@njit(inline="always")
def decode_q5_0(w, o, y):
    d = f16(w, o)
    for j in range(16):
        lo, hi = _q5_values(w, o + 2, o + 6, j)
        y[j] = d * np.float32(lo - 16)
        y[j + 16] = d * np.float32(hi - 16)


@njit(inline="always")
def decode_q5_1(w, o, y):
    d = f16(w, o)
    m = f16(w, o + 2)
    for j in range(16):
        lo, hi = _q5_values(w, o + 4, o + 8, j)
        y[j] = d * np.float32(lo) + m
        y[j + 16] = d * np.float32(hi) + m


@njit(inline="always")
def decode_q8_0(w, o, y):
    d = f16(w, o)
    for j in range(32):
        y[j] = np.float32(np.int8(w[o + 2 + j])) * d


@njit
def encode_q8_0(x, imp, out):
    # Round to nearest on the symmetric grid d * [-127, 127]; importance cannot change the
    # optimum by much at 8 bits, so, as ggml, it is not used.
    for b in range(x.shape[0] // 32):
        o = b * 34
        amax = np.float32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[b * 32 + j]))
        d = put_f16(out, o, amax / np.float32(127.0))
        inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        for j in range(32):
            out[o + 2 + j] = np.uint8(nearest_int(x[b * 32 + j] * inv) & 0xFF)


# ---------------------------------------------------------------------------------------------
# Encoders of the 4- and 5-bit types: the sub-block fit of fits.py on each block of 32, then a
# few least-squares refits of the scale (and min) as the f16 fields will hold them.

SIGNED_SCAN = 4     # scale candidates per end of the range in the signed fit
REFITS = 3


@njit
def _signed_block(xb, w, qlo, qhi, L, Lt):
    """x ~ d*L, L in [qlo, qhi]: quants into L; returns the f16-rounded d."""
    a = fit_signed(xb, w, 0, 32, qlo, qhi, SIGNED_SCAN, L)
    best_d = round_to_f16(a)
    best = signed_error(xb, w, 0, 32, best_d, qlo, qhi, L)
    d = best_d
    for _ in range(REFITS):
        sxl = sl2 = 0.0
        for i in range(32):
            sxl += w[i] * xb[i] * L[i]
            sl2 += w[i] * L[i] * L[i]
        if sl2 <= 0:
            break
        d = round_to_f16(sxl / sl2)
        if d == best_d:
            break
        err = signed_error(xb, w, 0, 32, d, qlo, qhi, Lt)
        if err >= best:
            break
        best, best_d = err, d
        L[:] = Lt
    return best_d


@njit
def _affine_block(xb, w, nmax, L, Lt, fit_work):
    """x ~ d*L + m, L in [0, nmax], m <= 0: quants into L; returns the f16-rounded (d, m).
    fit_work: affine_scratch's."""
    a, b = fit_affine(xb, w, 0, 32, nmax, L, fit_work)
    best_d, best_m = round_to_f16(a), round_to_f16(-b)
    best = affine_error(xb, w, 0, 32, best_d, -best_m, nmax, L)
    sw = sx = sxx = 0.0
    for i in range(32):
        sw += w[i]
        sx += w[i] * xb[i]
        sxx += w[i] * xb[i] * xb[i]
    for _ in range(REFITS):
        sl = sl2 = sxl = 0.0
        for i in range(32):
            sl += w[i] * L[i]
            sl2 += w[i] * L[i] * L[i]
            sxl += w[i] * xb[i] * L[i]
        a, b, _ = affine_lsq(sw, sx, sxx, sl, sl2, sxl)
        d, m = round_to_f16(a), round_to_f16(-b)
        if (d == best_d and m == best_m) or d <= 0:
            break
        err = affine_error(xb, w, 0, 32, d, -m, nmax, Lt)
        if err >= best:
            break
        best, best_d, best_m = err, d, m
        L[:] = Lt
    return best_d, best_m


@njit(inline="always")
def _put_nibbles(out, at, L, offset):
    """Quants (plus offset, 0..15 after it) j and j+16 share byte j: low and high nibble."""
    for j in range(16):
        out[at + j] = np.uint8(((L[j] + offset) & 15) | (((L[j + 16] + offset) & 15) << 4))


@njit(inline="always")
def _put_fifth_bits(out, at, L, offset):
    qh = 0
    for j in range(32):
        qh |= (((L[j] + offset) >> 4) & 1) << j
    put_u32(out, at, qh)


@njit
def _encode_legacy(x, imp, out, bits, affine):
    """Q4_0 (4, False), Q4_1 (4, True), Q5_0 (5, False), Q5_1 (5, True)."""
    block_bytes = 2 + 2 * affine + 4 * (bits == 5) + 16
    half = 1 << (bits - 1)
    w = np.empty(32, np.float32)
    L = np.empty(32, np.int32)
    Lt = np.empty(32, np.int32)
    fit_work = affine_scratch()
    for b in range(x.shape[0] // 32):
        o = b * block_bytes
        xb = x[b * 32:b * 32 + 32]
        block_weights(x, imp, b * 32, 32, w)
        at = o + 2
        if affine:
            d, m = _affine_block(xb, w, 2 * half - 1, L, Lt, fit_work)
            put_f16(out, o, d)
            put_f16(out, o + 2, m)
            offset = 0
            at += 2
        else:
            put_f16(out, o, _signed_block(xb, w, -half, half - 1, L, Lt))
            offset = half
        if bits == 5:
            _put_fifth_bits(out, at, L, offset)
            at += 4
        _put_nibbles(out, at, L, offset)


@njit
def encode_q4_0(x, imp, out):
    _encode_legacy(x, imp, out, 4, False)


@njit
def encode_q4_1(x, imp, out):
    _encode_legacy(x, imp, out, 4, True)


@njit
def encode_q5_0(x, imp, out):
    _encode_legacy(x, imp, out, 5, False)


@njit
def encode_q5_1(x, imp, out):
    _encode_legacy(x, imp, out, 5, True)


# ---------------------------------------------------------------------------------------------
# Unpackers for the integer kernels (Packing in quant/types.py): u = q + OFF for the symmetric
# types, u = q for the affine ones (w = d * u - min, min = -m), the f16 fields as in the file.

@njit(inline="always")
def _fifth_bits(w, at, u):
    qh = u32(w, at)
    for j in range(32):
        u[j] |= ((qh >> j) & 1) << 4


@njit(inline="always")
def unpack_q4_0(w, o, u, rec, y):
    copy_f16(rec, 0, w, o)
    nibbles32(w, o + 2, u)


@njit(inline="always")
def unpack_q4_1(w, o, u, rec, y):
    copy_f16(rec, 0, w, o)
    negated_f16(rec, 2, w, o + 2)
    nibbles32(w, o + 4, u)


@njit(inline="always")
def unpack_q5_0(w, o, u, rec, y):
    copy_f16(rec, 0, w, o)
    nibbles32(w, o + 6, u)
    _fifth_bits(w, o + 2, u)


@njit(inline="always")
def unpack_q5_1(w, o, u, rec, y):
    copy_f16(rec, 0, w, o)
    negated_f16(rec, 2, w, o + 2)
    nibbles32(w, o + 8, u)
    _fifth_bits(w, o + 4, u)


@njit(inline="always")
def unpack_q8_0(w, o, u, rec, y):
    copy_f16(rec, 0, w, o)
    for j in range(32):
        u[j] = w[o + 2 + j] ^ 128   # int8 q + 128


Q4_0 = register("Q4_0", "legacy", decode_q4_0, encode_q4_0, Packing("nib4", "f16", 32, 8, unpack_q4_0))
Q4_1 = register("Q4_1", "legacy", decode_q4_1, encode_q4_1, Packing("nib4", "f16_min", 32, -1, unpack_q4_1))
Q5_0 = register("Q5_0", "legacy", decode_q5_0, encode_q5_0, Packing("nib5", "f16", 32, 16, unpack_q5_0))
Q5_1 = register("Q5_1", "legacy", decode_q5_1, encode_q5_1, Packing("nib5", "f16_min", 32, -1, unpack_q5_1))
Q8_0 = register("Q8_0", "legacy", decode_q8_0, encode_q8_0, Packing("u8", "f16", 32, 128, unpack_q8_0))
