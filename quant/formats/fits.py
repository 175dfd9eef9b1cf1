"""Least-squares fits of one group of weights to a scaled integer grid, shared by the K-quant
and legacy encoders.

Two shapes of grid:
  * affine: x ~ a*L - b with L in [0, nmax] and b >= 0 (Q4_1, Q5_1; sub-blocks of Q2_K/Q4_K/Q5_K);
  * signed: x ~ a*L with L in [qlo, qhi] and a of either sign (Q4_0, Q5_0; Q3_K/Q6_K sub-blocks).
Every fit minimises sum_i w_i (x_i - value_i)^2 over the group x[s:s+n]; w is the importance
(the error that counts), or 1 without importance; for Q2_K and Q3_K either times favour_large's factor.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..encode_helpers import nearest_int, round_to_f16


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
def favour_large(x, o, n, w, spread):
    """Multiply the weights of block x[o:o+n] (the importance, or ones) by sqrt(spread *
    mean(x^2) + x^2), so that large weights count more. Fitted by the importance alone, the 2-
    and 3-bit K-quant rows come out shrunk toward zero (projection 0.94 where ggml's are at 0.96;
    docs/encoders.md); weighed this way they are not. Without an importance the same holds
    (Qwen2.5-Coder-1.5B's Q2_K rows 0.93 unweighted -> 0.96, its Q2_K preset's KLD 0.390 ->
    0.336, llama-quantize's 0.371)."""
    s2 = np.float32(0.0)
    for i in range(n):
        s2 += x[o + i] * x[o + i]
    s2 = s2 * np.float32(spread) / np.float32(n)
    for i in range(n):
        w[i] *= np.sqrt(s2 + x[o + i] * x[o + i])


@njit(inline="always")
def clamp_round(v, lo, hi):
    return min(hi, max(lo, nearest_int(v)))


# The scans below may reorder their sums (fastmath "reassoc"): LLVM then runs them across
# vector registers, several times faster than one weight at a time. No contraction into
# fused multiply-adds: each weight's value is computed as the decoder computes it.
SCAN_MATH = {"reassoc", "nsz"}


@njit(inline="always")
def grid_code(v, lo, hi):
    """The code of v (already divided by the step) on the integer grid [lo, hi], as a float:
    rounded half to even, clamped. Kept a float so that the scans stay in vector registers."""
    return min(hi, max(lo, np.rint(v)))


@njit(fastmath=SCAN_MATH, error_model="numpy")
def affine_error(x, w, s, n, a, b, nmax, L):
    """Quantize x[s:s+n] for value a*L - b (a, b already as the decoder computes them) into L;
    returns the weighted error."""
    xs = x[s:s + n]
    ws = w[s:s + n]
    Ls = L[s:s + n]
    inv = np.float32(1.0) / a if a > 0 else np.float32(0.0)
    top = np.float32(nmax)
    zero = np.float32(0.0)
    err = np.float32(0.0)
    for i in range(n):
        l = grid_code((xs[i] + b) * inv, zero, top)
        Ls[i] = np.int32(l)
        e = a * l - b - xs[i]
        err += ws[i] * e * e
    return err


@njit(fastmath=SCAN_MATH, error_model="numpy")
def affine_sums(x, w, s, n, inv, b, nmax):
    """For the codes L = round((x + b) * inv) clamped to [0, nmax] of x[s:s+n]: the sums
    sum w L, sum w L^2, sum w x L (the codes themselves are not kept)."""
    xs = x[s:s + n]
    ws = w[s:s + n]
    top = float(nmax)
    sl = sl2 = sxl = 0.0
    for i in range(n):
        l = grid_code((xs[i] + b) * inv, 0.0, top)
        wl = ws[i] * l
        sl += wl
        sl2 += wl * l
        sxl += wl * xs[i]
    return sl, sl2, sxl


@njit(fastmath=SCAN_MATH, error_model="numpy")
def affine_codes(x, s, n, inv, b, nmax, L):
    """The codes of affine_sums into L."""
    top = float(nmax)
    for i in range(s, s + n):
        L[i] = np.int32(grid_code((x[i] + b) * inv, 0.0, top))


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


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _moments(x, w, s, n):
    """sum w, sum w x, sum w x^2 and the least (at most 0) and largest x of x[s:s+n]."""
    xs = x[s:s + n]
    ws = w[s:s + n]
    xmin = np.float32(0.0)
    xmax = xs[0]
    sw = sx = sxx = 0.0
    for i in range(n):
        xmin = min(xmin, xs[i])
        xmax = max(xmax, xs[i])
        sw += ws[i]
        sx += ws[i] * xs[i]
        sxx += ws[i] * xs[i] * xs[i]
    return sw, sx, sxx, xmin, xmax


AFFINE_STEPS = 24   # step sizes scanned per sub-block (at most; a search may ask for fewer)
LLOYD_ROUNDS = 4    # least-squares fit and requantization rounds per scanned step (the same)


@njit
def affine_scratch():
    """fit_affine's work array: per scanned step its size, the inverse and the sums of its codes
    (sum w L, sum w L^2, sum w x L)."""
    return np.empty((5, AFFINE_STEPS + 1), np.float64)


@njit(fastmath=SCAN_MATH, error_model="numpy")
def _affine_sums_per_step(x, w, s, n, b, nmax, inv, sl, sl2, sxl):
    """affine_sums for every scanned step at once: the weights outside, the steps inside, so
    that the steps run across vector lanes (one sub-block's 16 or 32 weights are too few to)."""
    top = float(nmax)
    for k in range(inv.shape[0]):
        sl[k] = sl2[k] = sxl[k] = 0.0
    for i in range(s, s + n):
        xi = x[i]
        wi = w[i]
        for k in range(inv.shape[0]):
            l = grid_code((xi + b) * inv[k], 0.0, top)
            wl = wi * l
            sl[k] += wl
            sl2[k] += wl * l
            sxl[k] += wl * xi


@njit
def fit_affine(x, w, s, n, nmax, L, scratch, nsteps=AFFINE_STEPS, rounds=LLOYD_ROUNDS):
    """Best (a, b) for one sub-block: a scan of nsteps + 1 step sizes (nsteps <= AFFINE_STEPS),
    each refined Lloyd-style for up to `rounds` rounds (least squares for the quants, requantize
    with the fit, until the error stops falling). The codes of the best fit go into L: they are
    made once, at the end, from the step that gave them.
    Every step's first requantization starts from the same min, so those are made together
    (_affine_sums_per_step); the refinements that follow an improvement run one at a time."""
    sw, sx, sxx, xmin, xmax = _moments(x, w, s, n)
    if xmax <= xmin:
        L[s:s + n] = 0
        return 0.0, float(-xmin)
    best = np.inf
    best_a = float((xmax - xmin) / nmax)
    best_b = float(-xmin)
    code_inv, code_b = 1.0 / best_a, best_b
    steps, invs, sl, sl2, sxl = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4]
    steps, invs = steps[:nsteps + 1], invs[:nsteps + 1]
    for k in range(nsteps + 1):
        # step counts from nmax - 1 to nmax + 1.4 across the range, as ggml's make_qkx3 scans
        steps[k] = (xmax - xmin) / (nmax - 1.0 + 2.4 * k / nsteps)
        invs[k] = 1.0 / steps[k]
    _affine_sums_per_step(x, w, s, n, -float(xmin), nmax, invs, sl, sl2, sxl)
    for k in range(nsteps + 1):
        if k > 0 and sl[k] == sl[k - 1] and sl2[k] == sl2[k - 1] and sxl[k] == sxl[k - 1]:
            continue    # the same codes as the step before: its fit, no better than the best
        a = steps[k]
        b = -float(xmin)
        inv = invs[k]
        sums = (sl[k], sl2[k], sxl[k])
        for r in range(rounds):
            if r > 0:
                inv = 1.0 / a
                sums = affine_sums(x, w, s, n, inv, b, nmax)
            a_new, b_new, err = affine_lsq(sw, sx, sxx, sums[0], sums[1], sums[2])
            if a_new <= 0 or err >= best:
                break
            best, best_a, best_b = err, a_new, b_new
            code_inv, code_b = inv, b
            a, b = a_new, b_new
    affine_codes(x, s, n, code_inv, code_b, nmax, L)
    return best_a, best_b


@njit(fastmath=SCAN_MATH, error_model="numpy")
def signed_error(x, w, s, n, a, qlo, qhi, L):
    """Quantize x[s:s+n] for value a*L (a as the decoder computes it) into L; the weighted error."""
    xs = x[s:s + n]
    ws = w[s:s + n]
    Ls = L[s:s + n]
    inv = np.float32(1.0) / a if a != 0 else np.float32(0.0)
    lo = np.float32(qlo)
    hi = np.float32(qhi)
    err = np.float32(0.0)
    for i in range(n):
        l = grid_code(xs[i] * inv, lo, hi)
        Ls[i] = np.int32(l)
        e = a * l - xs[i]
        err += ws[i] * e * e
    return err


@njit(fastmath=SCAN_MATH, error_model="numpy")
def signed_sums(x, w, s, n, inv, qlo, qhi):
    """For the codes L = round(x * inv) clamped to [qlo, qhi] of x[s:s+n]: sum w x L and
    sum w L^2 (the codes themselves are not kept)."""
    xs = x[s:s + n]
    ws = w[s:s + n]
    lo = float(qlo)
    hi = float(qhi)
    sxl = sl2 = 0.0
    for i in range(n):
        l = grid_code(xs[i] * inv, lo, hi)
        wl = ws[i] * l
        sxl += wl * xs[i]
        sl2 += wl * l
    return sxl, sl2


@njit(fastmath=SCAN_MATH, error_model="numpy")
def signed_codes(x, s, n, inv, qlo, qhi, L):
    """The codes of signed_sums into L."""
    lo = float(qlo)
    hi = float(qhi)
    for i in range(s, s + n):
        L[i] = np.int32(grid_code(x[i] * inv, lo, hi))


@njit(fastmath=SCAN_MATH, error_model="numpy")
def largest_and_energy(x, w, s, n):
    """The x of largest magnitude in x[s:s+n] (the first one) and sum w x^2."""
    big = np.float32(0.0)
    sxx = 0.0
    for i in range(s, s + n):
        sxx += w[i] * x[i] * x[i]
        if abs(x[i]) > abs(big):
            big = x[i]
    return big, sxx


@njit(inline="always")
def signed_scan_step(c, nstep, qlo, qhi):
    """The code the largest |x| takes at scan step c of fit_signed: steps 0..nstep move it from
    one below |qlo| toward qlo, steps nstep+1.. from one below qhi toward qhi (the ends are
    unequal, so both signs are tried)."""
    end = qlo if c <= nstep else qhi
    k = c if c <= nstep else c - nstep - 1
    return (abs(end) - 1.0 + 2.0 * k / nstep) * (1.0 if end > 0 else -1.0)


@njit
def fit_signed(x, w, s, n, qlo, qhi, nstep, L):
    """Best scale a for one sub-block: the largest |x| is put near either end of the range
    (the ends are unequal, so both signs are tried), each candidate refined Lloyd-style. As in
    fit_affine, the codes are made once, at the end."""
    big, sxx = largest_and_energy(x, w, s, n)
    if big == 0:
        L[s:s + n] = 0
        return 0.0
    best = np.inf
    best_a = float(big / np.float32(qlo))
    code_inv = 1.0 / best_a
    for c in range(2 * (nstep + 1)):
        a = float(big) / signed_scan_step(c, nstep, qlo, qhi)
        for _ in range(LLOYD_ROUNDS):
            inv = 1.0 / a
            sxl, sl2 = signed_sums(x, w, s, n, inv, qlo, qhi)
            if sl2 <= 0:
                break
            a_new = sxl / sl2
            err = sxx - a_new * sxl  # the least-squares error for these quants
            if err >= best:
                break
            best, best_a = err, a_new
            code_inv = inv
            a = a_new
    signed_codes(x, s, n, code_inv, qlo, qhi, L)
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


@njit(inline="always")
def signed_super_starts(v, wt, lo, hi, big):
    """The f16 super scales a signed search starts from: super_scale's, then the largest
    sub-scale big put at either end of the code range [lo, hi]."""
    return (round_to_f16(super_scale(v, wt, lo, hi)), round_to_f16(big / lo), round_to_f16(big / hi))


@njit(inline="always")
def repeats_a_start(starts, k):
    """Whether start k equals an earlier one (a search from it would find the same codes)."""
    return (k > 0 and starts[k] == starts[0]) or (k > 1 and starts[k] == starts[1])
