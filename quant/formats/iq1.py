"""IQ1 types: groups of 8 ternary values (-1, 0, 1) from a 2048-point grid, shifted by +-delta.

block_iq1_s (256 w, 50 B): d f16 | qs u8[32] (low 8 index bits) | qh u16[8]
    per 32 weights, qh: 4 x 3 high index bits | 3-bit scale s | delta sign (bit 15)
    w = d*(2s+1) * (grid + delta)
block_iq1_m (256 w, 56 B): qs u8[32] | qh u8[16] (per group of 8: 3 high index bits + delta sign)
    | scales u16[4]: 3-bit scale per 16 weights x 4 in bits 0..11, and the f16 super-scale d
    spread over the top nibbles (bits 12..15) of the four words
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, f16_bits_to_f32, u16
from ..encode_helpers import f32_to_f16_bits, put_f16, put_u16, round_to_f16
from ..tables import IQ1_DELTA, IQ1S_GRID
from ..types import Packing, register
from .grid_codes import put_code, put_d, put_entry
from .grid_search import neighbour_lists


@njit(inline="always")
def put_ternary8(y, at, dl, index, negative_delta):
    delta = -IQ1_DELTA if negative_delta else IQ1_DELTA
    for k in range(8):
        y[at + k] = dl * (IQ1S_GRID[index, k] + delta)


@njit(inline="always")
def iq1s_scale(w, o, ib):
    """The odd integer 2s + 1 scaling group ib of 32 (times the block's d)."""
    return 2 * ((u16(w, o + 34 + 2 * ib) >> 12) & 7) + 1


@njit(inline="always")
def iq1m_d_bits(w, o):
    """The bits of IQ1_M's block scale, a float16 spread over the top nibbles of the four scale words."""
    sc0 = u16(w, o + 48)
    sc1 = u16(w, o + 50)
    sc2 = u16(w, o + 52)
    sc3 = u16(w, o + 54)
    return (sc0 >> 12) | ((sc1 >> 8) & 0xF0) | ((sc2 >> 4) & 0xF00) | (sc3 & 0xF000)


@njit(inline="always")
def iq1m_d(w, o):
    """IQ1_M's block scale."""
    return f16_bits_to_f32(iq1m_d_bits(w, o))


@njit(inline="always")
def iq1m_scale(w, o, j):
    """The odd integer 2s + 1 scaling sub-block j of 16 (times iq1m_d)."""
    return 2 * ((u16(w, o + 48 + 2 * (j // 4)) >> (3 * (j % 4))) & 7) + 1


@njit(inline="always")
def decode_iq1_s(w, o, y):
    d = f16(w, o)
    for ib in range(8):
        qh = u16(w, o + 34 + 2 * ib)
        dl = d * np.float32(iq1s_scale(w, o, ib))
        for l in range(4):
            index = w[o + 2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)
            put_ternary8(y, 32 * ib + 8 * l, dl, index, qh & 0x8000)


@njit(inline="always")
def decode_iq1_m(w, o, y):
    d = iq1m_d(w, o)
    for i in range(32):
        dl = d * np.float32(iq1m_scale(w, o, i // 2))
        h = (w[o + 32 + i // 2] >> (4 * (i % 2))) & 15
        put_ternary8(y, 8 * i, dl, w[o + i] | ((h & 7) << 8), h & 8)


# ---------------------------------------------------------------------------------------------
# Encoding.
#
# A super-block of 256 weights has one f16 scale d; each scale group (32 weights in IQ1_S, 16 in
# IQ1_M) a 3-bit l, so its values are (2l+1)*d*(g + sign*delta) with g a ternary grid point per 8
# weights; the delta sign is chosen per "shift group" (the 32 of a scale group in IQ1_S, each 8 in
# IQ1_M). The search, per super-block:
#   1. the weights, sorted within each shift group, with prefix sums, give in O(log n) the error
#      of the unconstrained ternary rounding at any scale (the "proxy", which ignores the grid);
#   2. Lloyd iterations on the proxy give each scale group its own best free scale;
#   3. many candidate d are ranked by the proxy, with l rounded either way from those scales;
#   4. the best few d are evaluated exactly: each 8 goes to the best grid point for the chosen
#      (l, sign), found through neighbour lists of the off-grid ternary patterns;
#   5. d is refitted by weighted least squares to the chosen quants and evaluated again.
# ---------------------------------------------------------------------------------------------

def _ternary_tables(n_distances=2):
    """Maps of the 3^8 ternary patterns of 8 values (code = sum (t_k+1) 3^k): grid index or -1,
    and for each off-grid pattern, the grid points within its n_distances nearest distances."""
    grid = IQ1S_GRID.astype(np.int32)
    pow3 = 3 ** np.arange(8)
    grid_of = np.full(3 ** 8, -1, np.int32)
    grid_of[((grid + 1) * pow3).sum(axis=1)] = np.arange(len(grid), dtype=np.int32)
    patterns = (np.arange(3 ** 8)[:, None] // pow3) % 3 - 1
    start, neighbours = neighbour_lists(patterns, grid, n_distances, np.int16)
    levels = (grid + 1).astype(np.int8)                 # grid values as 0, 1, 2
    return grid_of, start, neighbours, levels, pow3.astype(np.int32)


_GRID_OF, _NB_START, _NB_LIST, _GRID_LEVELS, _POW3 = _ternary_tables()


@njit
def _best_grid8(x, w, at, dl, delta, cost):
    """Best grid point for x[at:at+8] with values dl*(g + delta): (index, weighted error)."""
    code = 0
    base = np.float32(0.0)
    for k in range(8):
        xv = x[at + k]
        wv = w[at + k]
        best = np.float32(np.inf)
        bq = 0
        for q in range(3):
            t = xv - dl * (np.float32(q - 1) + delta)
            c = wv * t * t
            cost[3 * k + q] = c
            if c < best:
                best = c
                bq = q
        code += bq * _POW3[k]
        base += best
    g = _GRID_OF[code]
    if g >= 0:
        return g, base
    best_err = np.float32(np.inf)
    for j in range(_NB_START[code], _NB_START[code + 1]):
        gi = _NB_LIST[j]
        e = np.float32(0.0)
        for k in range(8):
            e += cost[3 * k + _GRID_LEVELS[gi, k]]
        if e < best_err:
            best_err = e
            g = gi
    return g, best_err


@njit
def _prepare_shift_groups(x, w, G, xs, pw, px, sxx):
    """Sort each shift group of the super-block x (256); prefix sums of w and w*x."""
    for sg in range(256 // G):
        o = sg * G
        order = np.argsort(x[o:o + G])
        p = sg * (G + 1)
        pw[p] = 0.0
        px[p] = 0.0
        s = 0.0
        for i in range(G):
            j = o + order[i]
            xs[o + i] = x[j]
            pw[p + i + 1] = pw[p + i] + w[j]
            px[p + i + 1] = px[p + i] + w[j] * x[j]
            s += w[j] * x[j] * x[j]
        sxx[sg] = s


@njit(inline="always")
def _count_below(xs, o, G, v):
    lo = 0
    hi = G
    while lo < hi:
        mid = (lo + hi) >> 1
        if xs[o + mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit
def _proxy_sums(xs, pw, px, sg, G, s, delta):
    """Rounding shift group sg to the levels s*(t + delta), t in -1, 0, 1, ignoring the grid:
    (sum w*x*v, sum w*v*v) with v = t + delta, so that the error is sxx - 2 s sqx + s^2 sq2."""
    o = sg * G
    p = sg * (G + 1)
    i1 = _count_below(xs, o, G, s * (delta - 0.5))
    i2 = _count_below(xs, o, G, s * (delta + 0.5))
    v0 = delta - 1.0
    v1 = delta
    v2 = delta + 1.0
    x0 = px[p + i1] - px[p]
    x1 = px[p + i2] - px[p + i1]
    x2 = px[p + G] - px[p + i2]
    w0 = pw[p + i1] - pw[p]
    w1 = pw[p + i2] - pw[p + i1]
    w2 = pw[p + G] - pw[p + i2]
    return v0 * x0 + v1 * x1 + v2 * x2, v0 * v0 * w0 + v1 * v1 * w1 + v2 * v2 * w2


@njit
def _proxy_shift_group(xs, pw, px, sxx, sg, G, s):
    """Best of both delta signs for shift group sg at scale s: (error, sum w x v, sum w v v)."""
    a, b = _proxy_sums(xs, pw, px, sg, G, s, IQ1_DELTA)
    ep = sxx[sg] - 2.0 * s * a + s * s * b
    c, e = _proxy_sums(xs, pw, px, sg, G, s, -IQ1_DELTA)
    em = sxx[sg] - 2.0 * s * c + s * s * e
    if em < ep:
        return em, c, e
    return ep, a, b


@njit
def _proxy_scale_group(xs, pw, px, sxx, b, B, G, s):
    per = B // G
    err = 0.0
    sqx = 0.0
    sq2 = 0.0
    for k in range(per):
        e, a, c = _proxy_shift_group(xs, pw, px, sxx, b * per + k, G, s)
        err += e
        sqx += a
        sq2 += c
    return err, sqx, sq2


@njit
def _free_scale(xs, pw, px, sxx, b, B, G, s0):
    """Lloyd iterations from s0 on the proxy: a locally best free scale for scale group b."""
    s = s0
    best_s = s0
    best_e = np.inf
    for _ in range(6):
        e, sqx, sq2 = _proxy_scale_group(xs, pw, px, sxx, b, B, G, s)
        if e < best_e:
            best_e = e
            best_s = s
        if sq2 <= 0.0 or sqx <= 0.0:
            break
        s_new = sqx / sq2
        if abs(s_new - s) <= 1e-6 * s:
            break
        s = s_new
    return best_s


@njit(inline="always")
def _l_candidates(s_b, d):
    """The two 3-bit l whose (2l+1)*d bracket the free scale s_b."""
    t = 0.5 * (s_b / d - 1.0)
    lo = min(7, max(0, int(np.floor(t))))
    hi = min(7, lo + 1)
    return lo, hi


@njit
def _proxy_total(xs, pw, px, sxx, s_free, B, G, d):
    total = 0.0
    for b in range(256 // B):
        lo, hi = _l_candidates(s_free[b], d)
        e, _, _ = _proxy_scale_group(xs, pw, px, sxx, b, B, G, np.float32(2 * lo + 1) * d)
        if hi != lo:
            e2, _, _ = _proxy_scale_group(xs, pw, px, sxx, b, B, G, np.float32(2 * hi + 1) * d)
            e = min(e, e2)
        total += e
    return total


@njit
def _exact_scale_group(x, w, b, B, G, dl, idx, neg, cost):
    """Grid points and delta signs for scale group b at scale dl: fills idx, neg; returns error."""
    err = 0.0
    per = B // G
    for k in range(per):
        sg = b * per + k
        o = sg * G
        ep = 0.0
        em = 0.0
        for g8 in range(G // 8):
            _, e = _best_grid8(x, w, o + 8 * g8, dl, IQ1_DELTA, cost)
            ep += e
            _, e = _best_grid8(x, w, o + 8 * g8, dl, -IQ1_DELTA, cost)
            em += e
        negative = em < ep
        delta = -IQ1_DELTA if negative else IQ1_DELTA
        neg[sg] = negative
        for g8 in range(G // 8):
            idx[sg * (G // 8) + g8], _ = _best_grid8(x, w, o + 8 * g8, dl, delta, cost)
        err += min(ep, em)
    return err


@njit
def _exact_total(x, w, s_free, B, G, d, L, idx, neg, t_idx, t_neg, cost):
    """Quantize the super-block x with super-scale d exactly: fills L, idx, neg; the error."""
    total = 0.0
    per8 = B // 8
    per = B // G
    for b in range(256 // B):
        lo, hi = _l_candidates(s_free[b], d)
        best = np.inf
        for l in range(lo, hi + 1):
            e = _exact_scale_group(x, w, b, B, G, np.float32(2 * l + 1) * d, t_idx, t_neg, cost)
            if e < best:
                best = e
                L[b] = l
                for k in range(per8):
                    idx[b * per8 + k] = t_idx[b * per8 + k]
                for k in range(per):
                    neg[b * per + k] = t_neg[b * per + k]
        total += best
    return total


@njit
def _refit_d(x, w, B, G, L, idx, neg):
    """Weighted least-squares super-scale for fixed l, grid points and signs."""
    sqx = 0.0
    sq2 = 0.0
    for i in range(256):
        delta = -IQ1_DELTA if neg[i // G] else IQ1_DELTA
        q = np.float32(2 * L[i // B] + 1) * (IQ1S_GRID[idx[i // 8], i % 8] + delta)
        sqx += w[i] * x[i] * q
        sq2 += w[i] * q * q
    return sqx / sq2 if sq2 > 0.0 else 0.0


# ggml's weighting of an error: importance x sqrt(OUTLIER_SIGMA * mean(x^2) + x^2)
OUTLIER_SIGMA = 2.0
OUTLIER_POWER = 0.5
# The stored super-scale is the fitted one times a lift: least squares leaves a 1.5-bit row
# shrunk toward zero by its relative error (projection 0.85-0.88 on the source), which reads
# worse through a model than the weighted error says (docs/encoders.md). The lifts are ggml's
# for these types; they bring the projection to 0.96-0.97.
IQ1S_LIFT = 1.125
IQ1M_LIFT = 1.1125
N_D_CANDIDATES = 24     # super-scales ranked by the proxy
N_D_EXACT = 2           # of which the best are evaluated exactly


@njit
def _workspace(B, G):
    n_shift = 256 // G
    return (np.empty(256, np.float32), np.empty(n_shift * (G + 1)), np.empty(n_shift * (G + 1)),
            np.empty(n_shift), np.empty(256 // B), np.empty(32, np.int64), np.empty(n_shift, np.bool_),
            np.empty(32, np.int64), np.empty(n_shift, np.bool_), np.empty(256 // B, np.int64),
            np.empty(24, np.float32), np.empty(N_D_CANDIDATES), np.empty(N_D_CANDIDATES, np.float32))


@njit
def _search_superblock(x, w, B, G, ws, L, idx, neg):
    """The whole search for the super-block x (256 weights, error weights w); returns the
    f16-rounded d (0: nothing to encode) and fills L (per scale group), idx (per 8 weights) and
    neg (per shift group)."""
    xs, pw, px, sxx, s_free, t_idx, t_neg, c_idx, c_neg, c_L, cost, d_err, d_val = ws
    _prepare_shift_groups(x, w, G, xs, pw, px, sxx)
    s_max = 0.0
    for b in range(256 // B):
        mean_abs = 0.0
        sw = 0.0
        for i in range(b * B, b * B + B):
            mean_abs += w[i] * abs(x[i])
            sw += w[i]
        s0 = 1.3 * mean_abs / sw if sw > 0 else 0.0
        s_free[b] = _free_scale(xs, pw, px, sxx, b, B, G, s0) if s0 > 0 else 0.0
        s_max = max(s_max, s_free[b])
    if not s_max > 0.0:
        return np.float32(0.0)
    # Candidate super-scales, log-spaced: the largest free scale lands on or around l = 7.
    for k in range(N_D_CANDIDATES):
        f = 0.45 * (1.3 / 0.45) ** (k / (N_D_CANDIDATES - 1))
        d = round_to_f16(f * s_max / 15.0)
        d_val[k] = d
        d_err[k] = _proxy_total(xs, pw, px, sxx, s_free, B, G, d) if d > 0 else np.inf
    order = np.argsort(d_err)
    best = np.inf
    best_d = np.float32(0.0)
    for r in range(N_D_EXACT + 1):
        if r < N_D_EXACT:
            d = d_val[order[r]]
        else:   # refit the best so far to its quants
            d = round_to_f16(_refit_d(x, w, B, G, L, idx, neg))
        if not (d > 0 and np.isfinite(d)):
            continue
        e = _exact_total(x, w, s_free, B, G, d, c_L, c_idx, c_neg, t_idx, t_neg, cost)
        if e < best:
            best = e
            best_d = d
            L[:] = c_L
            idx[:] = c_idx
            neg[:] = c_neg
    return best_d


@njit
def _weights(x, imp, w):
    """Per-weight error weights of a super-block: the importance (with a small floor so that
    scales stay defined) times (OUTLIER_SIGMA mean(x^2) + x^2)^OUTLIER_POWER, so that large
    weights count more; plain squared error without importance."""
    if imp.shape[0] == 0:
        w[:] = 1.0
        return
    mean = 0.0
    sumx2 = 0.0
    for i in range(256):
        mean += imp[i]
        sumx2 += x[i] * x[i]
    floor = np.float32(1e-4 * mean / 256.0) if mean > 0 else np.float32(1.0)
    sigma2 = OUTLIER_SIGMA * sumx2 / 256.0
    for i in range(256):
        w[i] = (imp[i] + floor) * np.float32((sigma2 + x[i] * x[i]) ** OUTLIER_POWER)


@njit
def _superblock(x, imp, sb, B, G, ws, w, L, idx, neg):
    """Search super-block sb of the row; all-zero quants when it has nothing to encode."""
    xb = x[sb * 256:sb * 256 + 256]
    _weights(xb, imp[sb * 256:sb * 256 + 256] if imp.shape[0] else imp, w)
    d = _search_superblock(xb, w, B, G, ws, L, idx, neg)
    if d <= 0:
        L[:] = 0
        idx[:] = 0
        neg[:] = False
    return d


@njit
def encode_iq1_s(x, imp, out):
    ws = _workspace(32, 32)
    w = np.empty(256, np.float32)
    L = np.zeros(8, np.int64)
    idx = np.zeros(32, np.int64)
    neg = np.zeros(8, np.bool_)
    for sb in range(x.shape[0] // 256):
        o = sb * 50
        put_f16(out, o, round_to_f16(IQ1S_LIFT * _superblock(x, imp, sb, 32, 32, ws, w, L, idx, neg)))
        for ib in range(8):
            h = (L[ib] << 12) | (0x8000 if neg[ib] else 0)
            for k in range(4):
                out[o + 2 + 4 * ib + k] = idx[4 * ib + k] & 255
                h |= (idx[4 * ib + k] >> 8) << (3 * k)
            put_u16(out, o + 34 + 2 * ib, h)


@njit
def encode_iq1_m(x, imp, out):
    ws = _workspace(16, 8)
    w = np.empty(256, np.float32)
    L = np.zeros(16, np.int64)
    idx = np.zeros(32, np.int64)
    neg = np.zeros(32, np.bool_)
    for sb in range(x.shape[0] // 256):
        o = sb * 56
        d = round_to_f16(IQ1M_LIFT * _superblock(x, imp, sb, 16, 8, ws, w, L, idx, neg))
        for i in range(32):
            out[o + i] = idx[i] & 255
        for i in range(16):
            lo = (idx[2 * i] >> 8) | (8 if neg[2 * i] else 0)
            hi = (idx[2 * i + 1] >> 8) | (8 if neg[2 * i + 1] else 0)
            out[o + 32 + i] = lo | (hi << 4)
        # The f16 super-scale's 16 bits go, a nibble each, to the tops of the four scale words.
        dbits = np.int64(f32_to_f16_bits(d))
        for j in range(4):
            word = (L[4 * j] | (L[4 * j + 1] << 3) | (L[4 * j + 2] << 6) | (L[4 * j + 3] << 9)
                    | (((dbits >> (4 * j)) & 15) << 12))
            put_u16(out, o + 48 + 2 * j, word)


# ---------------------------------------------------------------------------------------------
# Unpackers for the integer kernels (grid_codes.py says what they yield): index bits 8-10 from
# qh, bit 11 the sign of the delta (set: -delta), as the kernels' table is laid out

@njit(inline="always")
def unpack_iq1_s(w, o, u, rec, y):
    put_d(rec, w, o)
    for ib in range(8):
        qh = u16(w, o + 34 + 2 * ib)
        put_code(rec, ib, (qh >> 12) & 7)
        for l in range(4):
            index = w[o + 2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8) | ((qh >> 15) << 11)
            put_entry(u, 32 * ib + 8 * l, 8, index, 0)


@njit(inline="always")
def unpack_iq1_m(w, o, u, rec, y):
    # the 4 bits of qh per 8 weights are index bits 8-10 and the delta's sign, as the table wants
    for i in range(32):
        put_entry(u, 8 * i, 8, w[o + i] | (((w[o + 32 + i // 2] >> (4 * (i % 2))) & 15) << 8), 0)
    for j in range(16):
        put_code(rec, j, (u16(w, o + 48 + 2 * (j // 4)) >> (3 * (j % 4))) & 7)
    d = iq1m_d_bits(w, o)
    rec[0] = d & 255
    rec[1] = d >> 8


# u: the index bits of grid_codes.py (no signs); scale codes in nibbles, u in units of d (2c + 1) / 8
IQ1_S = register("IQ1_S", "iq1", decode_iq1_s, encode_iq1_s, Packing("iq1_s", "f16_nib_quarter", 32, 16, unpack_iq1_s))
IQ1_M = register("IQ1_M", "iq1", decode_iq1_m, encode_iq1_m, Packing("iq1_m", "f16_nib_quarter", 16, 16, unpack_iq1_m))
