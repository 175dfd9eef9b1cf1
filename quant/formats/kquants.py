"""K-quants: 256-weight super-blocks with quantized sub-block scales (Q2_K .. Q6_K).

Bit planes are laid out in 32-byte strips: a byte at strip position j of a strip holds the bits
of weights j, j+32, j+64, ... of that strip's 128-weight half (2-bit planes) or 64-weight group.

block_q2_K (256 w, 84 B):  scales u8[16] (lo: scale, hi: min) | qs u8[64] (2 bit) | d f16 | dmin f16
    w = d*sc*q - dmin*m over 16 sub-blocks of 16
block_q3_K (256 w, 110 B): hmask u8[32] | qs u8[64] (low 2 bits) | scales 6 bit x16 in 12 B | d f16
    q = low2 - 4*(1 - hbit), w = d*(sc-32)*q over 16 sub-blocks of 16
block_q4_K (256 w, 144 B): d f16 | dmin f16 | scales 6 bit (8 scales + 8 mins) in 12 B | qs u8[128]
    w = d*sc*q - dmin*m over 8 sub-blocks of 32
block_q5_K (256 w, 176 B): d f16 | dmin f16 | scales[12] | qh u8[32] | qs u8[128]
block_q6_K (256 w, 210 B): ql u8[128] | qh u8[64] | scales i8[16] | d f16
    q = low4 | high2 << 4, w = d*sc*(q-32) over 16 sub-blocks of 16
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16
from ..encode_helpers import put_f16, round_to_f16
from ..types import Packing, register
from .unpacking import copy_f16
from .fits import (AFFINE_STEPS, LLOYD_ROUNDS, SCAN_MATH, affine_error, affine_scratch, block_weights, clamp_round,
                   favour_large, fit_affine, grid_code, repeats_a_start, signed_error, signed_scan_step, signed_super_starts, super_scale)


@njit(inline="always")
def crumb(w, at, i):
    """2-bit plane value of weight i (0..255) in 64 bytes at `at`: strips of 32 bytes, 4 planes."""
    half, r = divmod(i, 128)
    return (w[at + half * 32 + r % 32] >> (2 * (r // 32))) & 3


@njit(inline="always")
def high_bit(w, at, i):
    """Bit i // 32 of byte i % 32 of the 32-byte mask at `at`."""
    return (w[at + i % 32] >> (i // 32)) & 1


@njit(inline="always")
def nibble(w, at, i):
    """4-bit value of weight i in 128 bytes at `at`: strips of 32 bytes, low nibbles first."""
    group, r = divmod(i, 64)
    return (w[at + group * 32 + r % 32] >> (4 * (r // 32))) & 15


@njit(inline="always")
def scale_min_k4(w, at, j):
    """Scale and min of sub-block j (0..7) from the 12-byte packed 6-bit table at `at`."""
    if j < 4:
        return w[at + j] & 63, w[at + j + 4] & 63
    sc = (w[at + j + 4] & 15) | ((w[at + j - 4] >> 6) << 4)
    m = (w[at + j + 4] >> 4) | ((w[at + j] >> 6) << 4)
    return sc, m


@njit(inline="always")
def q3k_scale(w, at, j):
    """Signed 6-bit scale of sub-block j (0..15) from the 12-byte table at `at`."""
    lo = (w[at + j % 8] >> (4 * (j // 8))) & 15
    hi = (w[at + 8 + j % 4] >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


@njit(inline="always")
def decode_q2_k(w, o, y):
    d = f16(w, o + 80)
    dmin = f16(w, o + 82)
    for s in range(16):
        sc = w[o + s]
        dl = d * np.float32(sc & 15)
        ml = dmin * np.float32(sc >> 4)
        for i in range(16 * s, 16 * s + 16):
            y[i] = dl * np.float32(crumb(w, o + 16, i)) - ml


@njit(inline="always")
def decode_q3_k(w, o, y):
    d = f16(w, o + 108)
    for s in range(16):
        dl = d * np.float32(q3k_scale(w, o + 96, s))
        for i in range(16 * s, 16 * s + 16):
            q = crumb(w, o + 32, i) - 4 * (1 - high_bit(w, o, i))
            y[i] = dl * np.float32(q)


@njit(inline="always")
def _decode_q45_k(w, o, y, qs_at, qh_at):
    # Q4_K and Q5_K share everything but the fifth bit (qh_at < 0: none).
    d = f16(w, o)
    dmin = f16(w, o + 2)
    for s in range(8):
        sc, m = scale_min_k4(w, o + 4, s)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(m)
        for i in range(32 * s, 32 * s + 32):
            q = nibble(w, qs_at, i)
            if qh_at >= 0:
                q |= high_bit(w, qh_at, i) << 4
            y[i] = dl * np.float32(q) - ml


@njit(inline="always")
def decode_q4_k(w, o, y):
    _decode_q45_k(w, o, y, o + 16, -1)


@njit(inline="always")
def decode_q5_k(w, o, y):
    _decode_q45_k(w, o, y, o + 48, o + 16)


@njit(inline="always")
def decode_q6_k(w, o, y):
    d = f16(w, o + 208)
    for s in range(16):
        dl = d * np.float32(np.int8(w[o + 192 + s]))
        for i in range(16 * s, 16 * s + 16):
            half, r = divmod(i, 128)
            lo = (w[o + half * 64 + r % 64] >> (4 * (r // 64))) & 15
            hi = crumb(w, o + 128, i)
            y[i] = dl * np.float32((lo | (hi << 4)) - 32)


# ----------------------------------------------------------------------------------------------
# Encoders.
#
# All five share one shape: fit each sub-block on its own (a scale, plus a min for the
# affine types Q2_K/Q4_K/Q5_K), quantize those per-sub-block values with the super-block
# scale(s) d (and dmin), then alternate two exact steps on the f16-rounded super scales:
#   * per sub-block, try the integer scale (and min) codes around the ideal ones and requantize
#     the weights for each, keeping the code pair of least weighted error;
#   * refit d (and dmin) by weighted least squares given all integer codes and quants.
# The weights are the importance itself (the error that counts), or 1 without importance.
# The per-sub-block fits live in fits.py (the legacy types use them too).

# --- affine super-blocks (Q2_K, Q4_K, Q5_K) ---


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _affine_errors3(x, w, s, n, a, b0, b1, b2, nmax):
    """The weighted errors of x[s:s+n] for values a*L - b with b = b0, b1, b2: affine_error's
    sums for three mins in one pass."""
    xs = x[s:s + n]
    ws = w[s:s + n]
    inv = np.float32(1.0) / a if a > 0 else np.float32(0.0)
    top = np.float32(nmax)
    zero = np.float32(0.0)
    e0 = e1 = e2 = np.float32(0.0)
    for i in range(n):
        xi = xs[i]
        wi = ws[i]
        r0 = a * grid_code((xi + b0) * inv, zero, top) - b0 - xi
        r1 = a * grid_code((xi + b1) * inv, zero, top) - b1 - xi
        r2 = a * grid_code((xi + b2) * inv, zero, top) - b2 - xi
        e0 += wi * r0 * r0
        e1 += wi * r1 * r1
        e2 += wi * r2 * r2
    return e0, e1, e2


@njit
def _pick_affine_codes(x, w, nsub, sub, nmax, smax, d, dm, ideal_a, ideal_b, sc, mn, L):
    """Per sub-block, the integer (scale, min) codes near ideal / (d, dm) of least error: the
    up to 3 x 3 candidates, first least error in (scale, min) order."""
    total = np.float32(0.0)
    for j in range(nsub):
        s = j * sub
        rs = clamp_round(ideal_a[j] / d, 0, smax) if d > 0 else 0
        rm = clamp_round(ideal_b[j] / dm, 0, smax) if dm > 0 else 0
        m0, m1 = max(0, rm - 1), min(smax, rm + 1)
        b0 = dm * np.float32(m0)
        b1 = dm * np.float32(min(m0 + 1, m1))
        b2 = dm * np.float32(m1)
        best = np.float32(np.inf)
        for cs in range(max(0, rs - 1), min(smax, rs + 1) + 1):
            e = _affine_errors3(x, w, s, sub, d * np.float32(cs), b0, b1, b2, nmax)
            for k in range(m1 - m0 + 1):      # the candidates that exist (2 at an end, else 3)
                if e[k] < best:
                    best = e[k]
                    sc[j] = cs
                    mn[j] = m0 + k
        if best < np.inf:
            affine_error(x, w, s, sub, d * np.float32(sc[j]), dm * np.float32(mn[j]), nmax, L)
        total += best
    return total


@njit
def _requantize(x, w, nsub, sub, nmax, d, dm, sc, mn, L):
    """The weights' codes into L for the super scales (d, dm) and the codes sc, mn; the error."""
    total = np.float32(0.0)
    for j in range(nsub):
        total += affine_error(x, w, j * sub, sub, d * np.float32(sc[j]), dm * np.float32(mn[j]), nmax, L)
    return total


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _refit_d_dmin(x, w, nsub, sub, sc, mn, L):
    """Least squares (d, dmin) for x ~ d*sc*L - dmin*m over the super-block."""
    saa = sab = sbb = sax = sbx = 0.0
    for j in range(nsub):
        for i in range(j * sub, j * sub + sub):
            a = float(sc[j] * L[i])
            b = float(mn[j])
            saa += w[i] * a * a
            sab += w[i] * a * b
            sbb += w[i] * b * b
            sax += w[i] * a * x[i]
            sbx += w[i] * b * x[i]
    # minimize sum w (d a - m b - x)^2: [saa -sab; -sab sbb] [d; m] = [sax; -sbx]
    det = saa * sbb - sab * sab
    if det > 0:
        d = (sax * sbb - sab * sbx) / det
        m = (sab * sax - saa * sbx) / det
        if m >= 0 and d > 0:
            return d, m
    if saa > 0:
        return sax / saa, 0.0
    return 0.0, 0.0


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _sub_weights(w, nsub, sub, L, wl2, wsum):
    """Per sub-block sum w L^2 and sum w: how much an error in its scale and in its min cost."""
    for j in range(nsub):
        a = b = 0.0
        for i in range(j * sub, j * sub + sub):
            a += w[i] * L[i] * L[i]
            b += w[i]
        wl2[j] = a
        wsum[j] = b


# How hard an affine super-block search works: the step sizes each sub-block's fit scans, its
# Lloyd rounds per step, the super-scale starts (1 or 2), the rounds per start (each a refit of
# the super scales), and whether a round after the first picks the (scale, min) codes again (1)
# or keeps them and only requantizes the weights (0).
FULL_SEARCH = (AFFINE_STEPS, LLOYD_ROUNDS, 2, 4, 1)
# Q2_K without an importance matrix: the error it weighs is a guess at what counts, and the
# full search's lower weighted error (1.1 % on Qwen2.5-Coder-1.5B's rows) did not show in the
# model's output beyond noise (its Q2_K preset's KLD 0.336 full, 0.343 short, one standard error
# apart; llama-quantize's 0.372), at twice the time (docs/encoders.md).
SHORT_SEARCH = (8, 1, 1, 2, 0)


@njit
def affine_block_scratch(nsub, sub):
    """The work arrays of _encode_affine_block, made once per call of an encoder: the fit's
    (fits.affine_scratch), 4 rows of per-sub-block float64 values, the trial (scale, min) codes
    and the trial quants."""
    return (affine_scratch(), np.empty((4, nsub), np.float64), np.empty(nsub, np.int32),
            np.empty(nsub, np.int32), np.empty(nsub * sub, np.int32))


@njit
def _encode_affine_block(x, w, nsub, sub, nmax, smax, sc, mn, L, scratch, search):
    """Codes for one super-block: fills sc, mn, L; returns the f16-rounded (d, dmin).
    scratch: affine_block_scratch's; search: FULL_SEARCH or SHORT_SEARCH."""
    nsteps, lloyd_rounds, starts, rounds, repick = search
    fit_work, rows, sc_t, mn_t, L_t = scratch
    ideal_a, ideal_b, wl2, wsum = rows[0], rows[1], rows[2], rows[3]
    amax = bmax = 0.0
    for j in range(nsub):
        ideal_a[j], ideal_b[j] = fit_affine(x, w, j * sub, sub, nmax, L, fit_work, nsteps, lloyd_rounds)
        amax = max(amax, ideal_a[j])
        bmax = max(bmax, ideal_b[j])
    _sub_weights(w, nsub, sub, L, wl2, wsum)
    best = np.float32(np.inf)
    best_d = best_dm = np.float32(0.0)
    first_d = first_dm = np.float32(np.nan)
    for start in range(starts):  # the best super scales for the ideal values, then the plain maxima
        if start == 0:
            d = round_to_f16(super_scale(ideal_a, wl2, 0, smax))
            dm = round_to_f16(super_scale(ideal_b, wsum, 0, smax))
            first_d, first_dm = d, dm
        else:
            d = round_to_f16(amax / smax)
            dm = round_to_f16(bmax / smax)
            if d == first_d and dm == first_dm:
                break   # the same start again: the same codes
        for r in range(rounds):
            if r == 0 or repick:
                err = _pick_affine_codes(x, w, nsub, sub, nmax, smax, d, dm, ideal_a, ideal_b, sc_t, mn_t, L_t)
            else:
                err = _requantize(x, w, nsub, sub, nmax, d, dm, sc_t, mn_t, L_t)
            if err < best:
                best, best_d, best_dm = err, d, dm
                sc[:] = sc_t
                mn[:] = mn_t
                L[:] = L_t
            else:
                break
            d_new, dm_new = _refit_d_dmin(x, w, nsub, sub, sc_t, mn_t, L_t)
            if d_new <= 0:
                break
            if round_to_f16(d_new) == d and round_to_f16(dm_new) == dm:
                break   # the refit keeps the stored scales: the codes would not change
            d = round_to_f16(d_new)
            dm = round_to_f16(dm_new)
    return best_d, best_dm


# --- signed super-blocks (Q3_K, Q6_K) ---

# The 16 sub-blocks of a Q3_K or Q6_K super-block are fitted side by side: the super-block is
# transposed so that weight i of every sub-block sits in one row, and each step works on all
# 16 sub-blocks at once, one per vector lane. The searches are those of fits.fit_signed and of
# a per-sub-block scale pick; only the order of the sums differs. One sub-block at a time, each
# sum of 16 weights ended in a horizontal reduction across a vector register (1.5-2x slower).
# (The affine fits above stay one sub-block at a time: their scans stop early per sub-block,
# which lanes cannot, and side by side they measured 2.5x slower for Q4_K.)

@njit
def signed_scratch(nsub, sub):
    """The work arrays of _encode_signed_block, made once per call of an encoder: the
    transposed block and weights, 10 rows of per-sub-block float64 values, 3 of float32
    errors, 3 of int32 codes and a row of flags."""
    return (np.empty((sub, nsub), np.float32), np.empty((sub, nsub), np.float32),
            np.empty((10, nsub), np.float64), np.empty((3, nsub), np.float32),
            np.empty((3, nsub), np.int32), np.empty(nsub, np.bool_))


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _transpose(x, w, nsub, sub, xt, wt):
    for j in range(nsub):
        for i in range(sub):
            xt[i, j] = x[j * sub + i]
            wt[i, j] = w[j * sub + i]


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _signed_sums_lanes(xt, wt, inv, qlo, qhi, sxl, sl2):
    """fits.signed_sums for every sub-block (lane j at its own 1/scale inv[j])."""
    lo = float(qlo)
    hi = float(qhi)
    sub, nsub = xt.shape
    for j in range(nsub):
        sxl[j] = 0.0
        sl2[j] = 0.0
    for i in range(sub):
        for j in range(nsub):
            l = grid_code(xt[i, j] * inv[j], lo, hi)
            wl = wt[i, j] * l
            sxl[j] += wl * xt[i, j]
            sl2[j] += wl * l


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _fit_signed_lanes(xt, wt, qlo, qhi, nstep, rows, live):
    """fits.fit_signed for every sub-block at once. Fills rows 0-1: the best scale of each
    sub-block and its codes' sum w L^2; rows 2-9 are the search's."""
    sub, nsub = xt.shape
    ideal, wl2 = rows[0], rows[1]
    big, sxx, best, code_inv = rows[2], rows[3], rows[4], rows[5]
    a, inv, sxl, sl2 = rows[6], rows[7], rows[8], rows[9]
    for j in range(nsub):
        big[j] = 0.0
        sxx[j] = 0.0
    for i in range(sub):
        for j in range(nsub):
            v = xt[i, j]
            sxx[j] += wt[i, j] * v * v
            if abs(v) > abs(big[j]):
                big[j] = v
    for j in range(nsub):
        best[j] = np.inf
        ideal[j] = float(np.float32(big[j]) / np.float32(qlo))
        code_inv[j] = 1.0 / ideal[j] if big[j] != 0 else 0.0
    for c in range(2 * (nstep + 1)):
        step = signed_scan_step(c, nstep, qlo, qhi)
        n_live = 0
        for j in range(nsub):
            a[j] = big[j] / step
            live[j] = big[j] != 0
            n_live += live[j]
        for _ in range(LLOYD_ROUNDS):
            if n_live == 0:
                break
            for j in range(nsub):
                inv[j] = 1.0 / a[j] if live[j] else 0.0
            _signed_sums_lanes(xt, wt, inv, qlo, qhi, sxl, sl2)
            for j in range(nsub):
                if not live[j]:
                    continue
                if sl2[j] <= 0:
                    live[j] = False
                    n_live -= 1
                    continue
                a_new = sxl[j] / sl2[j]
                err = sxx[j] - a_new * sxl[j]   # the least-squares error for these quants
                if err >= best[j]:
                    live[j] = False
                    n_live -= 1
                    continue
                best[j] = err
                ideal[j] = a_new
                code_inv[j] = inv[j]
                a[j] = a_new
    for j in range(nsub):
        if big[j] == 0:
            ideal[j] = 0.0
    _signed_sums_lanes(xt, wt, code_inv, qlo, qhi, sxl, wl2)


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _pick_signed_lanes(xt, wt, qlo, qhi, slo, shi, d, ideal, sc, errs, codes, rows):
    """Per sub-block, the integer scale code next to ideal / d of least error (up to three
    candidates, the first least one kept) into sc. Returns the total error and the
    least-squares super scale for these codes and quants (the refit)."""
    sub, nsub = xt.shape
    lo = np.float32(qlo)
    hi = np.float32(qhi)
    c0, nc = codes[0], codes[2]
    ak, iak, q, p = rows[0], rows[1], rows[2], rows[3]
    for j in range(nsub):
        r = clamp_round(ideal[j] / d, slo, shi) if d != 0 else 0
        c0[j] = max(slo, r - 1)
        nc[j] = min(shi, r + 1) - c0[j] + 1       # the candidates that exist (2 at an end, else 3)
    for k in range(3):
        e = errs[k]
        for j in range(nsub):
            e[j] = 0.0
            ak[j] = d * np.float32(min(c0[j] + k, shi))
            iak[j] = np.float32(1.0) / np.float32(ak[j]) if ak[j] != 0 else 0.0
        for i in range(sub):
            for j in range(nsub):
                xi = xt[i, j]
                r = np.float32(ak[j]) * grid_code(xi * np.float32(iak[j]), lo, hi) - xi
                e[j] += wt[i, j] * r * r
    total = np.float32(0.0)
    for j in range(nsub):
        best = np.float32(np.inf)
        for k in range(nc[j]):
            if errs[k, j] < best:
                best = errs[k, j]
                sc[j] = c0[j] + k
        total += best
        ak[j] = d * np.float32(sc[j])
        iak[j] = np.float32(1.0) / np.float32(ak[j]) if ak[j] != 0 else 0.0
        q[j] = 0.0
        p[j] = 0.0
    # the refit's sums for the codes chosen
    for i in range(sub):
        for j in range(nsub):
            xi = xt[i, j]
            l = float(grid_code(xi * np.float32(iak[j]), lo, hi))
            wl = float(wt[i, j]) * l
            q[j] += wl * l
            p[j] += wl * float(xi)
    saa = sax = 0.0
    for j in range(nsub):
        saa += float(sc[j]) * float(sc[j]) * q[j]
        sax += float(sc[j]) * p[j]
    return total, (sax / saa if saa > 0 else 0.0)


@njit
def _encode_signed_block(x, w, nsub, sub, qlo, qhi, slo, shi, nstep, nstarts, sc, L, scratch):
    """Codes for one super-block: fills sc, L; returns the f16-rounded d. nstarts: how many of
    signed_super_starts' starts to search from (1-3); scratch: signed_scratch's."""
    xt, wt, rows, errs, codes, live = scratch
    _transpose(x, w, nsub, sub, xt, wt)
    _fit_signed_lanes(xt, wt, qlo, qhi, nstep, rows, live)
    ideal, wl2 = rows[0], rows[1]
    big = 0.0
    for j in range(nsub):
        if abs(ideal[j]) > abs(big):
            big = ideal[j]
    sc_t = codes[1]
    best = np.float32(np.inf)
    best_d = np.float32(0.0)
    starts = signed_super_starts(ideal, wl2, slo, shi, big)
    for start in range(nstarts):
        if repeats_a_start(starts, start):
            continue
        d = starts[start]
        for _ in range(4):
            err, d_new = _pick_signed_lanes(xt, wt, qlo, qhi, slo, shi, d, ideal, sc_t, errs, codes, rows[2:])
            if err < best:
                best, best_d = err, d
                sc[:] = sc_t
            else:
                break
            if d_new == 0 or round_to_f16(d_new) == d:
                break   # no refit, or one that keeps the stored scale: the codes would not change
            d = round_to_f16(d_new)
    if best == np.inf:  # an all-zero block
        sc[:] = 0
        L[:] = 0
    else:             # the codes of the best scales, made once
        for j in range(nsub):
            signed_error(x, w, j * sub, sub, best_d * np.float32(sc[j]), qlo, qhi, L)
    return best_d


# --- packing (the inverses of crumb / high_bit / nibble / scale_min_k4); bytes start zeroed ---

@njit(inline="always")
def put_crumb(out, at, i, v):
    half, r = divmod(i, 128)
    out[at + half * 32 + r % 32] |= np.uint8(v << (2 * (r // 32)))


@njit(inline="always")
def put_high_bit(out, at, i, v):
    out[at + i % 32] |= np.uint8(v << (i // 32))


@njit(inline="always")
def put_nibble(out, at, i, v):
    group, r = divmod(i, 64)
    out[at + group * 32 + r % 32] |= np.uint8(v << (4 * (r // 32)))


@njit(inline="always")
def put_scale_min_k4(out, at, sc, mn):
    """Pack 8 six-bit scales and mins into the 12 bytes at `at`."""
    for j in range(4):
        out[at + j] = np.uint8((sc[j] & 63) | ((sc[j + 4] >> 4) << 6))
        out[at + j + 4] = np.uint8((mn[j] & 63) | ((mn[j + 4] >> 4) << 6))
        out[at + j + 8] = np.uint8((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4))


@njit(inline="always")
def put_q3k_scale(out, at, j, sc):
    """Store the signed 6-bit scale sc (-32..31) of sub-block j in the 12 bytes at `at`."""
    v = sc + 32
    out[at + j % 8] |= np.uint8((v & 15) << (4 * (j // 8)))
    out[at + 8 + j % 4] |= np.uint8((v >> 4) << (2 * (j // 4)))


@njit(inline="always")
def _zero(out, o, n):
    for i in range(o, o + n):
        out[i] = 0


@njit
def _encode_q45_k(x, imp, out, nmax, block_bytes):
    w = np.empty(256, np.float32)
    sc = np.empty(8, np.int32)
    mn = np.empty(8, np.int32)
    L = np.empty(256, np.int32)
    scratch = affine_block_scratch(8, 32)
    for b in range(x.shape[0] // 256):
        o = b * block_bytes
        xb = x[b * 256:b * 256 + 256]
        block_weights(x, imp, b * 256, 256, w)
        d, dm = _encode_affine_block(xb, w, 8, 32, nmax, 63, sc, mn, L, scratch, FULL_SEARCH)
        _zero(out, o, block_bytes)
        put_f16(out, o, d)
        put_f16(out, o + 2, dm)
        put_scale_min_k4(out, o + 4, sc, mn)
        qs_at = o + 16 if nmax == 15 else o + 48
        for i in range(256):
            put_nibble(out, qs_at, i, L[i] & 15)
            if nmax == 31:
                put_high_bit(out, o + 16, i, L[i] >> 4)


@njit
def encode_q4_k(x, imp, out):
    _encode_q45_k(x, imp, out, 15, 144)


@njit
def encode_q5_k(x, imp, out):
    _encode_q45_k(x, imp, out, 31, 176)


# Q2_K and Q3_K weigh each error by the importance (or 1) times sqrt(spread * mean(x^2) + x^2)
# (fits.favour_large; the spreads are ggml's for these types). Q4_K and up are not shrunk.
Q2K_SPREAD = 1.0
Q3K_SPREAD = 2.0


@njit
def q2k_search(imp):
    """The search Q2_K runs: the full one with an importance, the short one without."""
    return FULL_SEARCH if imp.shape[0] else SHORT_SEARCH


@njit
def encode_q2_k(x, imp, out):
    w = np.empty(256, np.float32)
    sc = np.empty(16, np.int32)
    mn = np.empty(16, np.int32)
    L = np.empty(256, np.int32)
    scratch = affine_block_scratch(16, 16)
    search = q2k_search(imp)
    for b in range(x.shape[0] // 256):
        o = b * 84
        block_weights(x, imp, b * 256, 256, w)
        favour_large(x, b * 256, 256, w, Q2K_SPREAD)
        d, dm = _encode_affine_block(x[b * 256:b * 256 + 256], w, 16, 16, 3, 15, sc, mn, L, scratch, search)
        _zero(out, o, 84)
        for j in range(16):
            out[o + j] = np.uint8(sc[j] | (mn[j] << 4))
        for i in range(256):
            put_crumb(out, o + 16, i, L[i])
        put_f16(out, o + 80, d)
        put_f16(out, o + 82, dm)


# Scan lengths of the signed sub-block fits (more steps did not lower the error on real rows),
# and the super-scale starts searched: Q3_K's other two starts lowered its error by 0.005 % on
# Qwen2.5-Coder-1.5B's rows for a fifth of its time, Q6_K's by 0.15 %.
Q3K_SCAN = 3
Q6K_SCAN = 2
Q3K_STARTS = 1
Q6K_STARTS = 3


@njit
def encode_q3_k(x, imp, out):
    w = np.empty(256, np.float32)
    sc = np.empty(16, np.int32)
    L = np.empty(256, np.int32)
    scratch = signed_scratch(16, 16)
    for b in range(x.shape[0] // 256):
        o = b * 110
        block_weights(x, imp, b * 256, 256, w)
        favour_large(x, b * 256, 256, w, Q3K_SPREAD)
        d = _encode_signed_block(x[b * 256:b * 256 + 256], w, 16, 16, -4, 3, -32, 31, Q3K_SCAN, Q3K_STARTS,
                                 sc, L, scratch)
        _zero(out, o, 110)
        for i in range(256):
            u = L[i] + 4
            put_high_bit(out, o, i, u >> 2)
            put_crumb(out, o + 32, i, u & 3)
        for j in range(16):
            put_q3k_scale(out, o + 96, j, sc[j])
        put_f16(out, o + 108, d)


@njit
def encode_q6_k(x, imp, out):
    w = np.empty(256, np.float32)
    sc = np.empty(16, np.int32)
    L = np.empty(256, np.int32)
    scratch = signed_scratch(16, 16)
    for b in range(x.shape[0] // 256):
        o = b * 210
        block_weights(x, imp, b * 256, 256, w)
        d = _encode_signed_block(x[b * 256:b * 256 + 256], w, 16, 16, -32, 31, -128, 127, Q6K_SCAN, Q6K_STARTS,
                                 sc, L, scratch)
        _zero(out, o, 210)
        for i in range(256):
            u = L[i] + 32
            half, r = divmod(i, 128)
            out[o + half * 64 + r % 64] |= np.uint8((u & 15) << (4 * (r // 64)))
            put_crumb(out, o + 128, i, u >> 4)
        for j in range(16):
            out[o + 192 + j] = np.uint8(sc[j] & 0xFF)
        put_f16(out, o + 208, d)


# ---------------------------------------------------------------------------------------------
# Unpackers for the integer kernels (Packing in quant/types.py): the codes u per weight and the
# scale fields: f16 d (and dmin) as in the file, one byte per sub-block scale (and min) code.

@njit(inline="always")
def crumbs256(w, at, u):
    """u[i] = crumb(w, at, i) for all 256 weights, in loops that vectorize (run at load)."""
    for half in range(2):
        for j in range(32):
            b = w[at + 32 * half + j]
            for plane in range(4):
                u[128 * half + 32 * plane + j] = (b >> (2 * plane)) & 3


@njit(inline="always")
def nibbles256(w, at, u):
    """u[i] = nibble(w, at, i) for all 256 weights."""
    for group in range(4):
        for j in range(32):
            b = w[at + 32 * group + j]
            u[64 * group + j] = b & 15
            u[64 * group + 32 + j] = b >> 4


@njit(inline="always")
def add_high_bits(w, at, u, shift):
    """u[i] |= high_bit(w, at, i) << shift for all 256 weights."""
    for plane in range(8):
        for j in range(32):
            u[32 * plane + j] |= ((w[at + j] >> plane) & 1) << shift


@njit(inline="always")
def unpack_q2_k(w, o, u, rec, y):
    # rec: d | dmin | the 16 scale bytes as stored (scale code low nibble, min code high)
    copy_f16(rec, 0, w, o + 80)
    copy_f16(rec, 2, w, o + 82)
    for s in range(16):
        rec[4 + s] = w[o + s]
    crumbs256(w, o + 16, u)


@njit(inline="always")
def unpack_q3_k(w, o, u, rec, y):
    # rec: d | 16 signed scale codes; u = q + 4 = low2 + 4 * hbit
    copy_f16(rec, 0, w, o + 108)
    for s in range(16):
        rec[2 + s] = np.uint8(q3k_scale(w, o + 96, s) & 0xFF)
    crumbs256(w, o + 32, u)
    add_high_bits(w, o, u, 2)


@njit(inline="always")
def _q45_k_fields(w, o, rec):
    # rec: d | dmin | 8 scale codes | 8 min codes
    copy_f16(rec, 0, w, o)
    copy_f16(rec, 2, w, o + 2)
    for s in range(8):
        a, m = scale_min_k4(w, o + 4, s)
        rec[4 + s] = a
        rec[12 + s] = m


@njit(inline="always")
def unpack_q4_k(w, o, u, rec, y):
    _q45_k_fields(w, o, rec)
    nibbles256(w, o + 16, u)


@njit(inline="always")
def unpack_q5_k(w, o, u, rec, y):
    _q45_k_fields(w, o, rec)
    nibbles256(w, o + 48, u)
    add_high_bits(w, o + 16, u, 4)


@njit(inline="always")
def unpack_q6_k(w, o, u, rec, y):
    # rec: d | 16 signed scale codes (as stored); u = q + 32: the low nibbles at o (two
    # halves of 64 bytes, nibbles(w, o, i) within each), bits 4-5 from the crumbs at o + 128
    copy_f16(rec, 0, w, o + 208)
    for s in range(16):
        rec[2 + s] = w[o + 192 + s]
    crumbs256(w, o + 128, u)
    for half in range(2):
        for j in range(64):
            b = w[o + 64 * half + j]
            u[128 * half + j] = (u[128 * half + j] << 4) | (b & 15)
            u[128 * half + 64 + j] = (u[128 * half + 64 + j] << 4) | (b >> 4)


Q2_K = register("Q2_K", "k", decode_q2_k, encode_q2_k, Packing("crumb2", "f16_nib_min", 16, -1, unpack_q2_k))
Q3_K = register("Q3_K", "k", decode_q3_k, encode_q3_k, Packing("crumb3", "f16_i8", 16, 4, unpack_q3_k))
Q4_K = register("Q4_K", "k", decode_q4_k, encode_q4_k, Packing("nib4", "f16_u8_min", 32, -1, unpack_q4_k))
Q5_K = register("Q5_K", "k", decode_q5_k, encode_q5_k, Packing("nib5", "f16_u8_min", 32, -1, unpack_q5_k))
Q6_K = register("Q6_K", "k", decode_q6_k, encode_q6_k, Packing("nib6", "f16_i8", 16, 32, unpack_q6_k))
