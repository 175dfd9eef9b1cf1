"""IQ3 types: groups of 4 magnitudes snapped to a codebook, signs stored apart.

block_iq3_xxs (256 w, 98 B): d f16 | qs u8[64] (256-entry grid indices) | 8 x u32 (4 x 7 sign bits
    | 4-bit scale) per 32 weights;  w = d*(0.5+s)/2 * grid * sign, parity-implied 8th sign bit
block_iq3_s (256 w, 110 B): d f16 | qs u8[64] | qh u8[8] (9th index bit) | signs u8[32]
    | scales u8[4] (4 bit x8);  512-entry grid, w = d*(1+2s) * grid * sign

Encoding. Both types decode a group of 4 as d * m * G[j] * sign with m = 2s+1 an odd sub-scale
multiple in 1..31 and G the grid in "units" (IQ3_XXS: grid/4 = 1, 3, ..., 13, 15.5; IQ3_S: the grid,
1, 3, ..., 15), so one search serves both:
  1. per 32 weights, a continuous scale: for many trial scales, each group of 4 magnitudes is
     rounded to the nearest levels; if that point is on the grid it is the exact weighted optimum
     (the error is separable), else the best of its precomputed grid neighbours is taken; the
     trial with the best weighted least-squares fit wins;
  2. per 256 weights, a few candidate super-scales d (f16-rounded): every 32-weight block tries the
     odd multiples of d around its continuous scale and re-snaps its groups at each, keeping the
     least error; the best d wins, then d is refit by least squares and tried once more.
IQ3_XXS stores 7 sign bits per 8 weights, the 8th follows from even parity: when the count of
negatives is odd, the weight cheapest to flip is quantized with the wrong sign (as a negative
magnitude, which snaps to the smallest level).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, packed_nibble, u32
from ..encode_helpers import put_f16, put_u32, round_to_f16
from ..tables import IQ3S_GRID, IQ3XXS_GRID, KSIGNS
from ..types import Packing, register
from .grid_codes import put_code, put_d, put_entry
from .grid_search import neighbour_lists


@njit(inline="always")
def put_group4(y, at, db, grid, index, signs, first_sign):
    for k in range(4):
        v = db * grid[index, k]
        y[at + k] = -v if (signs >> (first_sign + k)) & 1 else v


@njit(inline="always")
def iq3xxs_scale(d, aux):
    """The scale of a group of 32 from the block's d and the group's sign word (top 4 bits)."""
    return d * (np.float32(0.5) + np.float32(aux >> 28)) * np.float32(0.5)


@njit(inline="always")
def decode_iq3_xxs(w, o, y):
    d = f16(w, o)
    for ib in range(8):
        aux = u32(w, o + 66 + 4 * ib)
        db = iq3xxs_scale(d, aux)
        for l in range(4):
            signs = KSIGNS[(aux >> (7 * l)) & 127]
            for h in range(2):
                put_group4(y, 32 * ib + 8 * l + 4 * h, db, IQ3XXS_GRID,
                           w[o + 2 + 8 * ib + 2 * l + h], signs, 4 * h)


@njit(inline="always")
def decode_iq3_s(w, o, y):
    d = f16(w, o)
    for i in range(64):
        index = w[o + 2 + i] | (((w[o + 66 + i // 8] >> (i % 8)) & 1) << 8)
        db = d * np.float32(1 + 2 * packed_nibble(w, o + 106, i // 8))
        put_group4(y, 4 * i, db, IQ3S_GRID, index, w[o + 74 + i // 2], 4 * (i % 2))


# ---------------------------------------------------------------------------------------------
# Search tables, computed from the grids at import.

NEIGHBOUR_RINGS = 4   # an off-grid point searches the grid points at its 4 nearest distances


def _search_tables(grid: np.ndarray, unit: float):
    """Grid in units, its 8 sorted levels, code (3 bits per level index) -> grid index or -1,
    and for each off-grid code the grid indices at its NEIGHBOUR_RINGS nearest distances."""
    units = np.ascontiguousarray(grid / np.float32(unit), dtype=np.float32)
    levels = np.unique(units)
    assert levels.size == 8
    shifts = np.array([1, 8, 64, 512])
    codes = np.searchsorted(levels, units) @ shifts
    index_of = np.full(4096, -1, dtype=np.int32)
    index_of[codes] = np.arange(len(units), dtype=np.int32)
    # every code's level combination (level index k in bits 3k .. 3k + 2)
    points = levels[(np.arange(4096)[:, None] >> (3 * np.arange(4))) & 7]
    start, neighbours = neighbour_lists(points, units, NEIGHBOUR_RINGS, np.int16)
    # Rounding thresholds: midpoints between consecutive levels.
    thresholds = ((levels[1:] + levels[:-1]) / 2).astype(np.float32)
    return units, levels.astype(np.float32), thresholds, index_of, start, neighbours


(XXS_UNITS, XXS_LEVELS, XXS_THRESH, XXS_INDEX, XXS_NB_START, XXS_NB) = _search_tables(IQ3XXS_GRID, 4.0)
(S_UNITS, S_LEVELS, S_THRESH, S_INDEX, S_NB_START, S_NB) = _search_tables(IQ3S_GRID, 1.0)

# ---------------------------------------------------------------------------------------------
# Encoding (shared by both types; `units` etc. are one type's search tables).

# The stored super-scale is the fitted one times a lift: a weighted least-squares fit leaves a row
# shrunk toward zero by its relative error, which reads worse through a model than the weighted
# error says (docs/encoders.md). The lifts are ggml's for these types; they bring the rows'
# importance-weighted projection on the source (0.979 and 0.989 as fitted) to 0.99 and 1.02.
XXS_LIFT = np.float32(1.0125)
S_LIFT = np.float32(1.033)

# Continuous scales tried per 32 weights: amax / (12.0 ... 18.0). Five lost nothing against
# eleven on Qwen2.5-Coder-1.5B's rows with its importance matrix (weighted error -0.015 % for
# IQ3_XXS, +0.017 % for IQ3_S; the super-scale search after it decides more) in 60-75 % of the time.
TRIALS = 5
TRIAL_LO = np.float32(12.0)
TRIAL_STEP = np.float32(1.5)
# Super-scale candidates: d = max(block scales) / 31 * factor (f16-rounded).
D_FACTORS = np.array([0.99, 1.0125, 1.04], dtype=np.float32)


@njit
def group_codes(a, at, inv_s, thresholds, levels, codes):
    """The codes of the 8 groups of 4 weights at `at` at scale 1/inv_s: each weight's nearest
    level index (3 bits each). The 32 weights are levelled into `levels` in one loop, across
    vector lanes."""
    for i in range(32):
        t = a[at + i] * inv_s
        level = 0
        for b in range(7):
            level += t > thresholds[b]
        levels[i] = level
    for g in range(8):
        codes[g] = (levels[4 * g] | (levels[4 * g + 1] << 3) | (levels[4 * g + 2] << 6)
                    | (levels[4 * g + 3] << 9))


@njit(inline="always")
def snap_group(a, w, at, s, code, units, index_of, nb_start, nb):
    """Grid index of the group a[at:at+4] at scale s, least error weighted by w; code: its
    per-weight nearest levels (group_codes)."""
    j = index_of[code]
    if j >= 0:
        return j   # the per-weight nearest levels are on the grid: the exact optimum
    best = np.inf
    for p in range(nb_start[code], nb_start[code + 1]):
        c = nb[p]
        e = 0.0
        for k in range(4):
            diff = a[at + k] - s * units[c, k]
            e += w[at + k] * diff * diff
        if e < best:
            best = e
            j = c
    return j


@njit
def fit_scale(a, w, at, units, thresholds, index_of, nb_start, nb, levels, codes):
    """Best continuous scale (weighted least squares) for the 32 weights at `at`; 0 if all zero.
    levels, codes: group_codes' work arrays."""
    amax = np.float32(0.0)
    for i in range(32):
        amax = max(amax, a[at + i])
    if amax < np.float32(1e-30):
        return np.float32(0.0)
    best_score = 0.0
    best_scale = np.float32(0.0)
    for t in range(TRIALS + 1):
        if t < TRIALS:
            s = amax / (TRIAL_LO + TRIAL_STEP * t)
        elif best_scale > 0:
            s = best_scale   # one more round at the least-squares scale of the best trial
        else:
            break
        group_codes(a, at, np.float32(1.0) / s, thresholds, levels, codes)
        sumqx = 0.0
        sumq2 = 0.0
        for g in range(8):
            j = snap_group(a, w, at + 4 * g, s, codes[g], units, index_of, nb_start, nb)
            for k in range(4):
                q = units[j, k]
                sumqx += w[at + 4 * g + k] * a[at + 4 * g + k] * q
                sumq2 += w[at + 4 * g + k] * q * q
        if sumq2 > 0 and sumqx > 0 and sumqx * sumqx > best_score * sumq2:
            best_score = sumqx * sumqx / sumq2
            best_scale = np.float32(sumqx / sumq2)
    return best_scale


@njit
def snap_at_d(a, w, at, d, scale, units, thresholds, index_of, nb_start, nb, idx, io, base, bound, work):
    """With super-scale d, the 32 weights at `at` try the odd multiples of d nearest `scale`;
    returns (error, k) of the best (multiple 2k+1; the lower k at a tie), its grid indices in
    idx[io:io+8]. A candidate is dropped as soon as its error is above the best one's, or
    base + its error reaches bound (the caller's total would then lose to its best); the error
    is inf when every candidate was dropped so. work: (levels, codes, cand) int32 arrays of
    32, 8 and 8."""
    levels, codes, cand = work
    k0 = min(15, max(0, int(np.rint((scale / d - np.float32(1.0)) * np.float32(0.5)))))
    best_err = np.inf
    best_k = k0
    for c_k in range(3):   # the nearest multiple first: it is most often the best
        k = k0 if c_k == 0 else (k0 - 1 if c_k == 1 else k0 + 1)
        if k < 0 or k > 15:
            continue
        s = d * np.float32(2 * k + 1)   # exactly the decoder's d*(0.5+k)/2 * grid/4 for IQ3_XXS
        group_codes(a, at, np.float32(1.0) / s, thresholds, levels, codes)
        err = 0.0
        for g in range(8):
            j = snap_group(a, w, at + 4 * g, s, codes[g], units, index_of, nb_start, nb)
            cand[g] = j
            for c in range(4):
                diff = a[at + 4 * g + c] - s * units[j, c]
                err += w[at + 4 * g + c] * diff * diff
            # err only grows, and float addition is monotone: a candidate past either bound
            # now stays past it
            if err > best_err or base + err >= bound:
                break
        else:
            if err < best_err or (err == best_err and k < best_k):
                best_err = err
                best_k = k
                for g in range(8):
                    idx[io + g] = cand[g]
    return best_err, best_k


@njit
def fix_parity(a, w, neg, levels):
    """IQ3_XXS stores 7 signs per 8 weights, the 8th gives an even count of negatives: in a group
    with an odd count, flip the weight whose wrong sign costs least. It then snaps to the
    smallest level, costing w (|x| + s)^2 instead of its rounding error, with s estimated from
    its 32 weights' largest magnitude."""
    for g in range(32):
        odd = 0
        for i in range(8 * g, 8 * g + 8):
            odd ^= neg[i]
        if not odd:
            continue
        amax = np.float32(0.0)
        for i in range(32 * (g // 4), 32 * (g // 4) + 32):
            amax = max(amax, a[i])
        s = amax / levels[7]
        imin = 8 * g
        best = np.inf
        for i in range(8 * g, 8 * g + 8):
            r = np.inf
            for l in range(8):
                r = min(r, abs(a[i] - s * levels[l]))
            cost = w[i] * ((a[i] + s * levels[0]) ** 2 - r * r)
            if cost < best:
                best = cost
                imin = i
        neg[imin] ^= 1
        a[imin] = -a[imin]


@njit
def search_block(x, imp, at, parity, units, thresholds, index_of, nb_start, nb, idx, mult, neg):
    """Quantize the 256 weights x[at:at+256]: fills idx[64] (grid indices), mult[8] (sub-scales
    k, multiple 2k+1) and neg[256] (stored sign bits); returns the f16-exact super-scale d."""
    a = np.empty(256, dtype=np.float32)
    w = np.empty(256, dtype=np.float32)
    sumx2 = np.float32(0.0)
    for i in range(256):
        sumx2 += x[at + i] * x[at + i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(256.0)
    for i in range(256):
        v = x[at + i]
        # Without importance, sigma2 + x^2 rather than ggml's x^2: small weights still count
        # (the unweighted error is what is judged then), large ones a little more.
        if imp.shape[0] > 0:
            w[i] = imp[at + i] * np.sqrt(sigma2 + v * v)
        else:
            w[i] = sigma2 + v * v
        a[i] = abs(v)
        neg[i] = v < 0
    if parity:
        fix_parity(a, w, neg, XXS_LEVELS)

    work = (np.empty(32, dtype=np.int32), np.empty(8, dtype=np.int32), np.empty(8, dtype=np.int32))
    scales = np.empty(8, dtype=np.float32)
    max_scale = np.float32(0.0)
    for ib in range(8):
        scales[ib] = fit_scale(a, w, 32 * ib, units, thresholds, index_of, nb_start, nb, work[0], work[1])
        max_scale = max(max_scale, scales[ib])

    best_total = np.inf
    best_d = np.float32(0.0)
    cand_idx = np.empty(64, dtype=np.int32)
    cand_mult = np.empty(8, dtype=np.int32)
    n_f = D_FACTORS.shape[0]
    for f in range(n_f + 1):
        if f < n_f:
            d = round_to_f16(max_scale / np.float32(31.0) * D_FACTORS[f])
        else:
            # Least-squares super-scale for the best assignment so far, snapped again.
            if best_d == 0:
                break
            num = 0.0
            den = 0.0
            for ib in range(8):
                m = np.float32(2 * mult[ib] + 1)
                for g in range(8):
                    j = idx[8 * ib + g]
                    for c in range(4):
                        i = 32 * ib + 4 * g + c
                        num += w[i] * a[i] * m * units[j, c]
                        den += w[i] * (m * units[j, c]) ** 2
            if not den > 0:
                break
            d = round_to_f16(num / den)
        if not d > 0:
            continue
        total = 0.0
        for ib in range(8):
            err, k = snap_at_d(a, w, 32 * ib, d, scales[ib], units, thresholds, index_of,
                               nb_start, nb, cand_idx, 8 * ib, total, best_total, work)
            cand_mult[ib] = k
            total += err
            if total >= best_total:
                break   # this d has lost already
        if total < best_total:
            best_total = total
            best_d = d
            idx[:] = cand_idx
            mult[:] = cand_mult
    return best_d


@njit
def encode_iq3_xxs(x, imp, out):
    idx = np.empty(64, dtype=np.int32)
    mult = np.empty(8, dtype=np.int32)
    neg = np.empty(256, dtype=np.uint8)
    for b in range(x.shape[0] // 256):
        o = 98 * b
        d = search_block(x, imp, 256 * b, True, XXS_UNITS, XXS_THRESH, XXS_INDEX, XXS_NB_START,
                         XXS_NB, idx, mult, neg)
        put_f16(out, o, round_to_f16(d * XXS_LIFT))
        if d == 0:
            out[o:o + 98] = 0
            continue
        for ib in range(8):
            aux = mult[ib] << 28
            for l in range(4):
                bits = 0
                for c in range(7):   # the 8th sign bit is implied by even parity
                    bits |= neg[32 * ib + 8 * l + c] << c
                aux |= bits << (7 * l)
            put_u32(out, o + 66 + 4 * ib, aux)
            for g in range(8):
                out[o + 2 + 8 * ib + g] = idx[8 * ib + g]


@njit
def encode_iq3_s(x, imp, out):
    idx = np.empty(64, dtype=np.int32)
    mult = np.empty(8, dtype=np.int32)
    neg = np.empty(256, dtype=np.uint8)
    for b in range(x.shape[0] // 256):
        o = 110 * b
        d = search_block(x, imp, 256 * b, False, S_UNITS, S_THRESH, S_INDEX, S_NB_START, S_NB,
                         idx, mult, neg)
        put_f16(out, o, round_to_f16(d * S_LIFT))
        if d == 0:
            out[o:o + 110] = 0
            continue
        out[o + 66:o + 74] = 0
        for i in range(64):
            out[o + 2 + i] = idx[i] & 255
            out[o + 66 + i // 8] |= (idx[i] >> 8) << (i % 8)
        for i in range(32):
            bits = 0
            for c in range(8):
                bits |= neg[8 * i + c] << c
            out[o + 74 + i] = bits
        for i in range(4):
            out[o + 106 + i] = mult[2 * i] | (mult[2 * i + 1] << 4)


# ---------------------------------------------------------------------------------------------
# Unpackers for the integer kernels (grid_codes.py says what they yield)

@njit(inline="always")
def unpack_iq3_xxs(w, o, u, rec, y):
    put_d(rec, w, o)
    for ib in range(8):
        aux = u32(w, o + 66 + 4 * ib)
        put_code(rec, ib, aux >> 28)
        for l in range(4):
            signs = KSIGNS[(aux >> (7 * l)) & 127]
            for h in range(2):
                put_entry(u, 32 * ib + 8 * l + 4 * h, 4, w[o + 2 + 8 * ib + 2 * l + h], signs >> (4 * h))


@njit(inline="always")
def unpack_iq3_s(w, o, u, rec, y):
    put_d(rec, w, o)
    for i in range(64):
        index = w[o + 2 + i] | (((w[o + 66 + i // 8] >> (i % 8)) & 1) << 8)
        put_entry(u, 4 * i, 4, index, w[o + 74 + i // 2] >> (4 * (i % 2)))
    for j in range(8):
        put_code(rec, j, packed_nibble(w, o + 106, j))


# u: the sign and index bits of grid_codes.py; scale codes in nibbles
IQ3_XXS = register("IQ3_XXS", "iq3", decode_iq3_xxs, encode_iq3_xxs, Packing("iq3_xxs", "f16_nib_half", 32, 64, unpack_iq3_xxs))
IQ3_S = register("IQ3_S", "iq3", decode_iq3_s, encode_iq3_s, Packing("iq3_s", "f16_nib_odd", 32, 16, unpack_iq3_s))
