"""IQ4 types: 4-bit indices into a fixed non-linear table of 16 values (IQ4NL_VALUES).

block_iq4_nl (32 w, 18 B): d f16 | qs u8[16]     w[j] = d*T[lo(qs[j])], w[j+16] = d*T[hi(qs[j])]
block_iq4_xs (256 w, 136 B): d f16 | scales_h u16 (2 bit x8) | scales_l u8[4] (4 bit x8)
    | qs u8[128];  per 32 weights: w = d*(s-32) * T[q], nibbles laid out as in IQ4_NL
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, packed_nibble, u16
from ..encode_helpers import put_f16, put_u16, round_to_f16
from ..tables import IQ4NL_VALUES
from ..types import Packing, register
from .unpacking import copy_f16, nibbles32
from .fits import SCAN_MATH, block_weights, clamp_round, largest_and_energy, repeats_a_start, signed_super_starts


@njit(inline="always")
def put_nl32(y, at, w, qs_at, d):
    for j in range(16):
        b = w[qs_at + j]
        y[at + j] = d * IQ4NL_VALUES[b & 15]
        y[at + j + 16] = d * IQ4NL_VALUES[b >> 4]


@njit(inline="always")
def decode_iq4_nl(w, o, y):
    put_nl32(y, 0, w, o + 2, f16(w, o))


@njit(inline="always")
def iq4xs_scale(w, o, ib):
    """The signed 6-bit scale of group ib of 32: low nibble packed, high 2 bits in a u16."""
    return (packed_nibble(w, o + 4, ib) | (((u16(w, o + 2) >> (2 * ib)) & 3) << 4)) - 32


@njit(inline="always")
def decode_iq4_xs(w, o, y):
    d = f16(w, o)
    for ib in range(8):
        put_nl32(y, 32 * ib, w, o + 8 + 16 * ib, d * np.float32(iq4xs_scale(w, o, ib)))


# ---------------------------------------------------------------------------------------------
# Encoders. One group of 32 is fitted as x ~ a * T[q] (T the table): the largest |x| is put on
# either end of T (T is not symmetric, so both signs of a are tried) and a little inside, each
# candidate refined Lloyd-style (nearest table value for every weight, then the least-squares
# a). IQ4_XS then quantizes the eight group scales on one f16 step d, as the K-quants do.

NL_SCAN = 6         # scale candidates per end of the table
NL_LLOYD = 3
T_LO = IQ4NL_VALUES[0]
T_HI = IQ4NL_VALUES[15]


def _nearest_lookup():
    """Midpoints between neighbouring table values, and for each integer k in [-128, 127] the
    number of midpoints below k: the nearest index of v in [k, k+1) is that count, plus one if
    the next midpoint is below v too (the values lie 10 or more apart, so at most one midpoint
    falls in [k, k+1))."""
    mid = (IQ4NL_VALUES[:-1] + IQ4NL_VALUES[1:]) / np.float32(2.0)
    below = np.array([(mid < k).sum() for k in range(-128, 128)], dtype=np.int32)
    return np.append(mid, np.float32(np.inf)).astype(np.float32), below


NL_MID, NL_BELOW = _nearest_lookup()


@njit(inline="always")
def nearest_nl(v):
    """Index of the table value nearest v (ties to the lower one)."""
    v = min(np.float32(127.0), max(np.float32(-128.0), v))
    q = NL_BELOW[int(np.floor(v)) + 128]
    if NL_MID[q] < v:
        q += 1
    return q


@njit(fastmath=SCAN_MATH, error_model="numpy")
def nl_error(x, w, s, a, Q):
    """Quantize x[s:s+32] for a * T[q] (a as the decoder computes it) into Q; the error."""
    err = np.float32(0.0)
    inv = np.float32(1.0) / a if a != 0 else np.float32(0.0)
    for i in range(s, s + 32):
        q = nearest_nl(x[i] * inv) if a != 0 else 8
        Q[i] = q
        e = a * IQ4NL_VALUES[q] - x[i]
        err += w[i] * e * e
    return err


@njit(fastmath=SCAN_MATH, error_model="numpy")
def nl_error_only(x, w, s, a):
    """nl_error without the quants (a != 0)."""
    err = np.float32(0.0)
    inv = np.float32(1.0) / a
    for i in range(s, s + 32):
        e = a * IQ4NL_VALUES[nearest_nl(x[i] * inv)] - x[i]
        err += w[i] * e * e
    return err


@njit(fastmath=SCAN_MATH, error_model="numpy")
def nl_sums(x, w, s, inv):
    """For the quants q = nearest(x * inv) of x[s:s+32]: sum w x T[q] and sum w T[q]^2."""
    sxq = sqq = 0.0
    for i in range(s, s + 32):
        t = IQ4NL_VALUES[nearest_nl(x[i] * inv)]
        sxq += w[i] * x[i] * t
        sqq += w[i] * t * t
    return sxq, sqq


@njit
def fit_nl(x, w, s, Q):
    """The least-squares a for x[s:s+32] ~ a * T[q]; the quants go to Q (made once, at the
    end, from the scale that gave the best fit)."""
    big, sxx = largest_and_energy(x, w, s, 32)
    if big == 0:
        for i in range(s, s + 32):
            Q[i] = 8  # T[8] = 1: the smallest magnitude, times a = 0
        return 0.0
    best = np.inf
    best_a = float(big / T_HI)
    code_inv = 1.0 / best_a
    for end in (T_LO, T_HI):
        for k in range(NL_SCAN):
            a = float(big) / (float(end) * (1.0 - 0.04 * k))
            for _ in range(NL_LLOYD):
                inv = 1.0 / a
                sxq, sqq = nl_sums(x, w, s, inv)
                if sqq <= 0:
                    break
                a = sxq / sqq
                err = sxx - a * sxq
                if err >= best or a == 0:
                    break
                best, best_a = err, a
                code_inv = inv
    for i in range(s, s + 32):
        Q[i] = nearest_nl(x[i] * code_inv)
    return best_a


@njit(inline="always")
def put_nl_quants(out, at, Q, s):
    for j in range(16):
        out[at + j] = np.uint8(Q[s + j] | (Q[s + j + 16] << 4))


@njit
def encode_iq4_nl(x, imp, out):
    w = np.empty(32, np.float32)
    Q = np.empty(32, np.int32)
    Qt = np.empty(32, np.int32)
    for b in range(x.shape[0] // 32):
        o = b * 18
        xb = x[b * 32:b * 32 + 32]
        block_weights(x, imp, b * 32, 32, w)
        a = fit_nl(xb, w, 0, Q)
        d = round_to_f16(a)
        best = nl_error(xb, w, 0, d, Q)
        for _ in range(2):  # refit on the f16-rounded scale
            sxq = sqq = 0.0
            for i in range(32):
                t = IQ4NL_VALUES[Q[i]]
                sxq += w[i] * xb[i] * t
                sqq += w[i] * t * t
            d_new = round_to_f16(sxq / sqq) if sqq > 0 else d
            if d_new == d:
                break
            err = nl_error(xb, w, 0, d_new, Qt)
            if err >= best:
                break
            best, d = err, d_new
            Q[:] = Qt
        put_f16(out, o, d)
        put_nl_quants(out, o + 2, Q, 0)


@njit
def _pick_xs_codes(x, w, d, ideal, sc, Q):
    """Per group, the scale code in [-32, 31] near ideal/d of least error (quants into Q);
    the total error."""
    total = np.float32(0.0)
    for j in range(8):
        s = 32 * j
        r = clamp_round(ideal[j] / d, -32, 31)
        best = np.float32(np.inf)
        for c in range(max(-32, r - 1), min(31, r + 1) + 1):
            err = nl_error_only(x, w, s, d * np.float32(c)) if c != 0 else nl_error(x, w, s, np.float32(0.0), Q)
            if err < best:
                best = err
                sc[j] = c
        nl_error(x, w, s, d * np.float32(sc[j]), Q)
        total += best
    return total


@njit
def encode_iq4_xs(x, imp, out):
    w = np.empty(256, np.float32)
    Q = np.empty(256, np.int32)
    Qc = np.empty(256, np.int32)
    ideal = np.empty(8, np.float64)
    wt = np.empty(8, np.float64)
    sc = np.empty(8, np.int32)
    sct = np.empty(8, np.int32)
    for b in range(x.shape[0] // 256):
        o = b * 136
        xb = x[b * 256:b * 256 + 256]
        block_weights(x, imp, b * 256, 256, w)
        big = 0.0
        for j in range(8):
            ideal[j] = fit_nl(xb, w, 32 * j, Q)
            if abs(ideal[j]) > abs(big):
                big = ideal[j]
            t2 = 0.0  # how much an error in this group's scale costs
            for i in range(32 * j, 32 * j + 32):
                t2 += w[i] * IQ4NL_VALUES[Q[i]] ** 2
            wt[j] = t2
        best = np.float32(np.inf)
        best_d = np.float32(0.0)
        sc[:] = 0
        for i in range(256):
            Q[i] = 8
        starts = signed_super_starts(ideal, wt, -32, 31, big)
        for start in range(3):
            if repeats_a_start(starts, start):
                continue
            d = starts[start]
            for _ in range(3):
                if d == 0:
                    break
                err = _pick_xs_codes(xb, w, d, ideal, sct, Qc)
                if err >= best:
                    break
                best, best_d = err, d
                sc[:] = sct
                Q[:] = Qc
                saa = sax = 0.0  # refit d on the integer codes and quants
                for i in range(256):
                    a = float(sct[i // 32]) * IQ4NL_VALUES[Qc[i]]
                    saa += w[i] * a * a
                    sax += w[i] * a * xb[i]
                d_new = round_to_f16(sax / saa) if saa > 0 else np.float32(0.0)
                if d_new == d:
                    break   # the refit keeps the stored scale: the codes would not change
                d = d_new
        put_f16(out, o, best_d)
        scales_h = 0
        for j in range(8):
            u = sc[j] + 32
            scales_h |= (u >> 4) << (2 * j)
            if j % 2 == 0:
                out[o + 4 + j // 2] = np.uint8(u & 15)
            else:
                out[o + 4 + j // 2] |= np.uint8((u & 15) << 4)
            put_nl_quants(out, o + 8 + 16 * j, Q, 32 * j)
        put_u16(out, o + 2, scales_h)


# ---------------------------------------------------------------------------------------------
# Unpackers for the integer kernels (Packing in quant/types.py): u is the 4-bit index itself,
# looked up in the kernel (value = T[u] + 128, a 16-byte table in a register).

@njit(inline="always")
def unpack_iq4_nl(w, o, u, rec, y):
    copy_f16(rec, 0, w, o)
    nibbles32(w, o + 2, u)


@njit(inline="always")
def unpack_iq4_xs(w, o, u, rec, y):
    # rec: d | 8 signed scale codes
    copy_f16(rec, 0, w, o)
    for ib in range(8):
        rec[2 + ib] = np.uint8(iq4xs_scale(w, o, ib) & 0xFF)
        nibbles32(w, o + 8 + 16 * ib, u[32 * ib:])


IQ4_TABLE = tuple(int(v) + 128 for v in IQ4NL_VALUES)   # 1 .. 241
IQ4_NL = register("IQ4_NL", "iq4", decode_iq4_nl, encode_iq4_nl,
                  Packing("lut4", "f16", 32, 128, unpack_iq4_nl, IQ4_TABLE))
IQ4_XS = register("IQ4_XS", "iq4", decode_iq4_xs, encode_iq4_xs,
                  Packing("lut4", "f16_i8", 32, 128, unpack_iq4_xs, IQ4_TABLE))
