"""Least-squares fits of one group of weights to a scaled integer grid, shared by the K-quant
and legacy encoders.

Two shapes of grid:
  * affine: x ~ a*L - b with L in [0, nmax] and b >= 0 (Q4_1, Q5_1; sub-blocks of Q2_K/Q4_K/Q5_K);
  * signed: x ~ a*L with L in [qlo, qhi] and a of either sign (Q4_0, Q5_0; Q3_K/Q6_K sub-blocks).
Every fit minimises sum_i w_i (x_i - value_i)^2 over the group x[s:s+n]; w is the importance
(the error that counts; for Q2_K and Q3_K times favour_large's factor), or 1 without importance.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..encode_helpers import nearest_int


@njit(inline="always")
def block_weights(x, imp, o, n, w):
    """Weights of block x[o:o+n] into w: the importance, floored so no weight is exactly 0."""
    if imp.shape[0] == 0:
        for i in range(n):
            w[i] = np.float32(1.0)
        return
    top = np.float32(0.0)
    for i in range(n):
        top = max(top, imp[o + i])
    floor = top * np.float32(1e-6) if top > 0 else np.float32(1.0)
    for i in range(n):
        w[i] = max(imp[o + i], floor)


@njit(inline="always")
def favour_large(x, imp, o, n, w, spread):
    """With an importance, multiply the weights of block x[o:o+n] by sqrt(spread * mean(x^2) +
    x^2), so that large weights count more. Fitted by the importance alone, the 2- and 3-bit
    K-quant rows come out shrunk toward zero (projection 0.94 where ggml's are at 0.96;
    docs/encoders.md); weighed this way they are not."""
    if imp.shape[0] == 0:
        return
    s2 = np.float32(0.0)
    for i in range(n):
        s2 += x[o + i] * x[o + i]
    s2 = s2 * np.float32(spread) / np.float32(n)
    for i in range(n):
        w[i] *= np.sqrt(s2 + x[o + i] * x[o + i])


@njit(inline="always")
def clamp_round(v, lo, hi):
    return min(hi, max(lo, nearest_int(v)))


@njit
def affine_error(x, w, s, n, a, b, nmax, L):
    """Quantize x[s:s+n] for value a*L - b (a, b already as the decoder computes them)."""
    err = np.float32(0.0)
    inv = np.float32(1.0) / a if a > 0 else np.float32(0.0)
    for i in range(s, s + n):
        l = clamp_round((x[i] + b) * inv, 0, nmax)
        L[i] = l
        e = a * np.float32(l) - b - x[i]
        err += w[i] * e * e
    return err


@njit
def affine_quant(x, w, s, n, a, b, nmax, L):
    """Quantize x[s:s+n] for a*L - b into L; returns the sums sum w L, sum w L^2, sum w x L."""
    inv = 1.0 / a
    sl = sl2 = sxl = 0.0
    for i in range(s, s + n):
        l = clamp_round((x[i] + b) * inv, 0, nmax)
        L[i] = l
        wl = w[i] * l
        sl += wl
        sl2 += wl * l
        sxl += wl * x[i]
    return sl, sl2, sxl


@njit
def affine_lsq(sw, sx, sxx, sl, sl2, sxl):
    """Weighted least squares (a, b) for x ~ a*L - b, b >= 0, from the sums; with its error."""
    det = sw * sl2 - sl * sl
    a = c = 0.0
    if det > 0:
        a = (sw * sxl - sx * sl) / det
        c = (sl2 * sx - sl * sxl) / det  # x ~ a*L + c
    if det <= 0 or c > 0:
        c = 0.0
        a = sxl / sl2 if sl2 > 0 else 0.0
    err = a * a * sl2 + 2 * a * c * sl + c * c * sw - 2 * a * sxl - 2 * c * sx + sxx
    return a, -c, err


@njit(inline="always")
def _add_affine_terms(acc, x, w, i, a, b, nmax):
    """acc (sum w L, sum w L^2, sum w x L) with one weight's terms added, as affine_quant adds them."""
    l = clamp_round((x[i] + b) * (1.0 / a), 0, nmax)
    wl = w[i] * l
    return acc[0] + wl, acc[1] + wl * l, acc[2] + wl * x[i]


@njit
def affine_quant4(x, w, s, n, a, b, nmax):
    """affine_quant's sums for four step sizes a[0..3] at once (no codes kept): four sets of
    accumulators side by side, each summed in affine_quant's order and precision."""
    s0 = s1 = s2 = s3 = (0.0, 0.0, 0.0)
    for i in range(s, s + n):
        s0 = _add_affine_terms(s0, x, w, i, a[0], b, nmax)
        s1 = _add_affine_terms(s1, x, w, i, a[1], b, nmax)
        s2 = _add_affine_terms(s2, x, w, i, a[2], b, nmax)
        s3 = _add_affine_terms(s3, x, w, i, a[3], b, nmax)
    return s0, s1, s2, s3


@njit
def fit_affine(x, w, s, n, nmax, L, Lt):
    """Best (a, b) for one sub-block: a scan of step sizes, each refined Lloyd-style (least
    squares for the quants, requantize with the fit, until the error stops falling).

    Every step's first quantization is independent of the others, so they are summed four at
    a time (affine_quant4) and then taken in order; the codes of a step are made again only
    when it improves on the best so far."""
    xmin = np.float32(0.0)
    xmax = x[s]
    sw = sx = sxx = 0.0
    for i in range(s, s + n):
        xmin = min(xmin, x[i])
        xmax = max(xmax, x[i])
        sw += w[i]
        sx += w[i] * x[i]
        sxx += w[i] * x[i] * x[i]
    if xmax <= xmin:
        for i in range(s, s + n):
            L[i] = 0
        return 0.0, float(-xmin)
    best = np.inf
    best_a = float((xmax - xmin) / nmax)
    best_b = float(-xmin)
    nstep = 24
    a4 = np.empty(4)
    for k0 in range(0, nstep + 1, 4):
        for t in range(4):
            # step counts from nmax - 1 to nmax + 1.4 across the range, as ggml's make_qkx3 scans
            a4[t] = (xmax - xmin) / (nmax - 1.0 + 2.4 * min(k0 + t, nstep) / nstep)
        sums = affine_quant4(x, w, s, n, a4, -float(xmin), nmax)
        for t in range(min(4, nstep + 1 - k0)):
            a, b = a4[t], -float(xmin)
            sl, sl2, sxl = sums[t]
            for it in range(4):
                if it > 0:
                    sl, sl2, sxl = affine_quant(x, w, s, n, a, b, nmax, Lt)
                a_new, b_new, err = affine_lsq(sw, sx, sxx, sl, sl2, sxl)
                if a_new <= 0 or err >= best:
                    break
                if it == 0:
                    affine_quant(x, w, s, n, a, b, nmax, Lt)   # this step's codes, made again
                best, best_a, best_b = err, a_new, b_new
                for i in range(s, s + n):
                    L[i] = Lt[i]
                a, b = a_new, b_new
    return best_a, best_b


@njit
def signed_error(x, w, s, n, a, qlo, qhi, L):
    """Quantize x[s:s+n] for value a*L (a as the decoder computes it); the weighted error."""
    err = np.float32(0.0)
    inv = np.float32(1.0) / a if a != 0 else np.float32(0.0)
    for i in range(s, s + n):
        l = clamp_round(x[i] * inv, qlo, qhi)
        L[i] = l
        e = a * np.float32(l) - x[i]
        err += w[i] * e * e
    return err


@njit
def signed_quant(x, w, s, n, a, qlo, qhi, L):
    """Quantize x[s:s+n] for a*L into L; returns sum w x L and sum w L^2."""
    inv = 1.0 / a
    sxl = sl2 = 0.0
    for i in range(s, s + n):
        l = clamp_round(x[i] * inv, qlo, qhi)
        L[i] = l
        wl = w[i] * l
        sxl += wl * x[i]
        sl2 += wl * l
    return sxl, sl2


@njit(inline="always")
def _add_signed_terms(acc, x, w, i, a, qlo, qhi):
    """acc (sum w x L, sum w L^2) with one weight's terms added, as signed_quant adds them."""
    l = clamp_round(x[i] * (1.0 / a), qlo, qhi)
    wl = w[i] * l
    return acc[0] + wl * x[i], acc[1] + wl * l


@njit
def signed_quant4(x, w, s, n, a, qlo, qhi):
    """signed_quant's sums for four scales a[0..3] at once (no codes kept), each summed in
    signed_quant's order and precision."""
    s0 = s1 = s2 = s3 = (0.0, 0.0)
    for i in range(s, s + n):
        s0 = _add_signed_terms(s0, x, w, i, a[0], qlo, qhi)
        s1 = _add_signed_terms(s1, x, w, i, a[1], qlo, qhi)
        s2 = _add_signed_terms(s2, x, w, i, a[2], qlo, qhi)
        s3 = _add_signed_terms(s3, x, w, i, a[3], qlo, qhi)
    return s0, s1, s2, s3


@njit
def fit_signed(x, w, s, n, qlo, qhi, nstep, L, Lt):
    """Best scale a for one sub-block: the largest |x| is put near either end of the range
    (the ends are unequal, so both signs are tried), each candidate refined Lloyd-style. As in
    fit_affine, the candidates' first quantizations are summed four at a time."""
    big = np.float32(0.0)
    sxx = 0.0
    for i in range(s, s + n):
        sxx += w[i] * x[i] * x[i]
        if abs(x[i]) > abs(big):
            big = x[i]
    if big == 0:
        for i in range(s, s + n):
            L[i] = 0
        return 0.0
    best = np.inf
    best_a = float(big / np.float32(qlo))
    n_try = 2 * (nstep + 1)          # steps 0..nstep toward qlo, then toward qhi
    a4 = np.empty(4)
    for g in range(0, n_try, 4):
        for t in range(4):
            c = min(g + t, n_try - 1)
            end = qlo if c <= nstep else qhi
            k = c if c <= nstep else c - nstep - 1
            a4[t] = float(big) / (abs(end) - 1.0 + 2.0 * k / nstep) * (1.0 if end > 0 else -1.0)
        sums = signed_quant4(x, w, s, n, a4, qlo, qhi)
        for t in range(min(4, n_try - g)):
            a = a4[t]
            sxl, sl2 = sums[t]
            for it in range(4):
                if it > 0:
                    sxl, sl2 = signed_quant(x, w, s, n, a, qlo, qhi, Lt)
                if sl2 <= 0:
                    break
                a_new = sxl / sl2
                err = sxx - a_new * sxl  # the least-squares error for these quants
                if err >= best:
                    break
                if it == 0:
                    signed_quant(x, w, s, n, a, qlo, qhi, Lt)   # this candidate's codes, made again
                best, best_a = err, a_new
                for i in range(s, s + n):
                    L[i] = Lt[i]
                a = a_new
    return best_a


# --- the step of a row of sub-block scales (K-quant and IQ4_XS super-blocks) ---

@njit
def super_scale(v, wt, lo, hi):
    """The step d for codes round(v / d) in [lo, hi] of least sum wt (v - d*code)^2: the
    largest |v| is put at each end of the range and a little inside it, each refit."""
    big = 0.0
    for j in range(v.shape[0]):
        if abs(v[j]) > abs(big):
            big = v[j]
    if big == 0:
        return 0.0
    best = np.inf
    best_d = 0.0
    for end in (lo, hi):
        if end == 0:
            continue
        for k in range(16):
            d = big / (end - 0.125 * k * np.sign(end))
            svq = sqq = 0.0
            for j in range(v.shape[0]):
                q = clamp_round(v[j] / d, lo, hi)
                svq += wt[j] * v[j] * q
                sqq += wt[j] * q * q
            if sqq <= 0:
                continue
            d = svq / sqq
            err = 0.0
            for j in range(v.shape[0]):
                e = v[j] - d * clamp_round(v[j] / d, lo, hi)
                err += wt[j] * e * e
            if err < best:
                best, best_d = err, d
    return best_d
