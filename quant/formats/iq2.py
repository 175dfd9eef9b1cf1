"""IQ2 types: groups of 8 magnitudes snapped to an E8-lattice codebook, signs stored apart.

block_iq2_xxs (256 w, 66 B): d f16 | 8 x (u32 grid indices: 4 x 8 bit | u32 signs+scale)
    per 32 weights: 4 codebook indices (256-entry grid) | 4 x 7 sign bits | 4-bit scale
    w = d*(0.5+s)/4 * grid * sign;  the 8th sign bit of each group follows from even parity
block_iq2_xs (256 w, 74 B): d f16 | qs u16[32] (9-bit index | 7 sign bits) | scales u8[8] (4 bit x16)
block_iq2_s (256 w, 82 B): d f16 | qs u8[32] | signs u8[32] | qh u8[8] (2 high index bits x32)
    | scales u8[8] (4 bit x16);  1024-entry grid, all 8 sign bits stored

Encoding (all three types share it): a grid point is 8 levels from {8, 25, 43}. Per group of 8,
the target magnitudes |x| are snapped to the nearest level per coordinate; if that point is in
the codebook it is the best one, otherwise the codebook points in the nearest distance shells
(neighbour lists computed at import) are scored by the weighted error. With a parity-implied
sign (XXS, XS) an odd count of negatives forces one element to the wrong sign: the few elements
where that costs least are tried. Each 32 (XXS) or 16 (XS, S) weights get their own scale from
a scan of candidate scales plus a weighted least-squares refit; the block's f16 d and the 4-bit
sub-scales are then chosen by trying several d and, per sub-block, the sub-scales around the
ideal one, scoring every choice with the scale the decoder will see. The last pass searches the
whole codebook exactly (optimal point and wrong-sign element) for every group.

Two choices make the encoded rows carry the source's magnitude rather than the least-squares
fit's (which shrinks a row toward zero by its relative error, 10 % at 2 bits, and reads worse
through a model's layers than the weighted error says; docs/encoders.md): every search fits the
grid's levels as the odd multiples 8, 24, 40 that they approximate, so the decoder's 25 and 43
put the middle and large weights 4 % and 7.5 % further out than fitted; and each error is
weighted by the importance times sqrt(mean(x^2) + x^2), so that large weights count more.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..bits import f16, packed_nibble, u16, u32
from ..encode_helpers import nearest_int, put_f16, put_u16, put_u32, round_to_f16
from ..tables import IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KSIGNS
from ..types import Packing, register
from .grid_codes import put_code, put_d, put_entry
from .grid_search import neighbour_lists


@njit(inline="always")
def iq2_scale(d, s):
    return d * (np.float32(0.5) + np.float32(s)) * np.float32(0.25)


@njit(inline="always")
def put_group8(y, at, db, grid, index, signs):
    """Write the 8 weights db * grid[index] with sign bit k of `signs` negating weight k."""
    for k in range(8):
        v = db * grid[index, k]
        y[at + k] = -v if (signs >> k) & 1 else v


@njit(inline="always")
def decode_iq2_xxs(w, o, y):
    d = f16(w, o)
    for ib in range(8):
        at = o + 2 + 8 * ib
        aux = u32(w, at + 4)
        db = iq2_scale(d, aux >> 28)   # the top 4 bits of each group's sign word
        for l in range(4):
            put_group8(y, 32 * ib + 8 * l, db, IQ2XXS_GRID, w[at + l], KSIGNS[(aux >> (7 * l)) & 127])


@njit(inline="always")
def decode_iq2_xs(w, o, y):
    d = f16(w, o)
    for i in range(32):
        q = u16(w, o + 2 + 2 * i)
        put_group8(y, 8 * i, iq2_scale(d, packed_nibble(w, o + 66, i // 2)), IQ2XS_GRID, q & 511, KSIGNS[q >> 9])


@njit(inline="always")
def decode_iq2_s(w, o, y):
    d = f16(w, o)
    for i in range(32):
        index = w[o + 2 + i] | (((w[o + 66 + i // 4] >> (2 * (i % 4))) & 3) << 8)
        put_group8(y, 8 * i, iq2_scale(d, packed_nibble(w, o + 74, i // 2)), IQ2S_GRID, index, w[o + 34 + i])


# ---------------------------------------------------------------------------------------------
# Encoding

GRID_LEVELS = np.unique(IQ2XXS_GRID).astype(np.float32)   # the decoder's magnitudes 8, 25, 43
assert all(np.array_equal(np.unique(g), GRID_LEVELS) for g in (IQ2XS_GRID, IQ2S_GRID))
LEVELS = np.array([8, 24, 40], np.float32)      # the same levels as the searches fit them
MIDPOINTS = ((LEVELS[1:] + LEVELS[:-1]) / 2).astype(np.float32)  # nearest-level thresholds
POW3 = 3 ** np.arange(8, dtype=np.int64)
N_CODES = 3 ** 8            # every point of {8, 25, 43}^8, coded as base-3 level digits
NEIGHBOUR_SHELLS = 2        # off-grid points list the codebook points of their nearest shells
# The sub-block scale scan: one wrong-sign candidate per odd-parity group and 10 scales
# (amax / (43 * ratio), ratio 0.75 ... 1.29) cost 0.07 % in weighted error against 2 and 15 on
# Qwen2.5-Coder-1.5B's rows with its importance matrix, in 70 % of the time; the exact search at
# the chosen sub-scales after it is what sets the codes.
FLIP_TRIES = 1              # wrong-sign candidates tried per odd-parity group
SCALE_STEPS = 10            # candidate scales per sub-block: amax / (43 * ratio) ...
SCALE_RATIO0 = np.float32(0.75)
SCALE_RATIO_STEP = np.float32(0.06)
REFITS = 3                  # least-squares rescale / re-snap rounds after the scan
D_FACTORS = np.linspace(0.8, 1.15, 36).astype(np.float32)  # block scale candidates
SUBSCALE_REACH = 1          # sub-scales tried on either side of the ideal one
GROUP_EPS = np.float32(1e-15)
# The exact search skips first quads by a bound on the 512- and 1024-point grids (IQ2_XS 0.93x,
# IQ2_S 0.72x the time, the same codes); on the 256-point grid (IQ2_XXS, 4 points a first quad)
# the checks cost more than they skip (1.07x), and it scans every point.
PRUNE_ABOVE = 256


class Codebook:
    """One IQ2 grid as the encoder uses it (computed at import from tables.py's grid values).

    lev:   (N, 8) level index (0, 1, 2) of each coordinate of each grid point
    quads: (N, 2) base-3 codes (0..80) of the levels of coordinates 0-3 and 4-7
    gmap:  (3^8,) code of a point of {8, 25, 43}^8 -> its grid index, or -1 if off the grid
    start, neighbours: for an off-grid code u, neighbours[start[u]:start[u+1]] are the grid
    points in the NEIGHBOUR_SHELLS smallest squared distances from it.
    by_first, first_start: the grid indices ordered by their first quad's code (stable), those
    whose first quad has code q at by_first[first_start[q]:first_start[q+1]].
    prune: whether the exact search skips first quads by a bound (PRUNE_ABOVE).
    """

    def __init__(self, grid, shells=NEIGHBOUR_SHELLS):
        self.lev = np.searchsorted(GRID_LEVELS, grid).astype(np.uint8)
        self.quads = (self.lev.reshape(-1, 2, 4).astype(np.int64) @ POW3[:4]).astype(np.uint8)
        codes = self.lev.astype(np.int64) @ POW3
        self.gmap = np.full(N_CODES, -1, np.int32)
        self.gmap[codes] = np.arange(len(grid), dtype=np.int32)
        # Nearness at the decoder's levels: at the evenly spaced search levels distances tie so
        # often that the lists would be 4-7 times longer.
        points = GRID_LEVELS[(np.arange(N_CODES)[:, None] // POW3) % 3]
        self.start, self.neighbours = neighbour_lists(points, grid, shells, np.int32)
        self.by_first = np.argsort(self.quads[:, 0], kind="stable").astype(np.int32)
        self.first_start = np.searchsorted(self.quads[self.by_first, 0], np.arange(82)).astype(np.int32)
        self.prune = len(grid) > PRUNE_ABOVE

    def tables(self):
        return (self.lev, self.quads, self.gmap, self.start, self.neighbours, self.by_first, self.first_start,
                self.prune)


XXS_BOOK = Codebook(IQ2XXS_GRID)
XS_BOOK = Codebook(IQ2XS_GRID)
S_BOOK = Codebook(IQ2S_GRID)
XXS_TABLES = XXS_BOOK.tables()
XS_TABLES = XS_BOOK.tables()
S_TABLES = S_BOOK.tables()


@njit(inline="always")
def group_scale(d, s):
    """The scale the decoder applies to grid values, exactly as iq2_scale computes it."""
    return iq2_scale(np.float32(d), s)


@njit
def block_weights(x, imp, o, w):
    """Error weights of the 256-block at o: sqrt(mean(x^2) + x^2) (larger weights count more),
    times the importance if there is one (+ a tiny floor so that dead columns still get a sane
    fit)."""
    s2 = 0.0
    for i in range(256):
        s2 += x[o + i] * x[o + i]
    s2 /= 256.0
    m = 0.0
    if imp.shape[0]:
        for i in range(256):
            m = max(m, imp[o + i])
    for i in range(256):
        w[i] = np.sqrt(s2 + x[o + i] * x[o + i])
        if imp.shape[0]:
            w[i] *= imp[o + i] + 1e-6 * m


@njit(inline="always")
def point_cost(a, w, o, flip, c, lev, j):
    """Weighted error of grid point j at scale c for the magnitudes a[o:o+8]; element `flip`
    (or none if -1) has the wrong sign, so its target is -a."""
    e = 0.0
    for k in range(8):
        q = c * LEVELS[lev[j, k]]
        r = a[o + k] + q if k == flip else a[o + k] - q
        e += w[o + k] * r * r
    return e


@njit(inline="always")
def point_moments(a, w, o, flip, lev, j):
    """(sum w t q, sum w q^2) of grid point j against targets t (q in grid units)."""
    sqx = 0.0
    sq2 = 0.0
    for k in range(8):
        q = LEVELS[lev[j, k]]
        t = -a[o + k] if k == flip else a[o + k]
        sqx += w[o + k] * t * q
        sq2 += w[o + k] * q * q
    return sqx, sq2


@njit
def best_point(a, w, o, flip, c, lev, gmap, start, nb, tab):
    """The best grid point (index, error) near the per-coordinate nearest point at scale c.
    Off the grid, each coordinate's error at each of the 3 levels is computed once into tab
    (8, 3), and a neighbour's error is the sum of its 8 entries (the terms and the order of
    point_cost, so the same error)."""
    u = 0
    t0 = c * MIDPOINTS[0]
    t1 = c * MIDPOINTS[1]
    for k in range(8):
        if k != flip:  # a wrong-sign element wants the smallest level (digit 0)
            v = a[o + k]
            u += (0 if v < t0 else (1 if v < t1 else 2)) * POW3[k]
    j = gmap[u]
    if j >= 0:
        return j, point_cost(a, w, o, flip, c, lev, j)
    for k in range(8):
        for m in range(3):
            q = c * LEVELS[m]
            r = a[o + k] + q if k == flip else a[o + k] - q
            tab[k, m] = w[o + k] * r * r
    best_j = nb[start[u]]
    best_e = np.inf
    for n in range(start[u], start[u + 1]):
        jn = nb[n]
        e = 0.0
        for k in range(8):
            e += tab[k, lev[jn, k]]
        if e < best_e:
            best_e = e
            best_j = jn
    return best_j, best_e


@njit
def best_group(a, w, o, odd, c, lev, gmap, start, nb, tab):
    """(grid index, wrong-sign element or -1, error) for one group at scale c. With odd parity
    the FLIP_TRIES elements whose wrong sign costs least in isolation are tried."""
    if not odd:
        j, e = best_point(a, w, o, -1, c, lev, gmap, start, nb, tab)
        return j, -1, e
    lo = c * LEVELS[0]
    tried = 0
    best_j, best_f, best_e = 0, 0, np.inf
    for _ in range(FLIP_TRIES):
        f = -1
        fd = np.inf
        for k in range(8):
            if (tried >> k) & 1:
                continue
            v = a[o + k]
            r = v - lo if v < c * MIDPOINTS[0] else (v - c * LEVELS[1] if v < c * MIDPOINTS[1]
                                                     else v - c * LEVELS[2])
            d = w[o + k] * ((v + lo) * (v + lo) - r * r)
            if d < fd:
                fd = d
                f = k
        tried |= 1 << f
        j, e = best_point(a, w, o, f, c, lev, gmap, start, nb, tab)
        if e < best_e:
            best_j, best_f, best_e = j, f, e
    return best_j, best_f, best_e


@njit(inline="always")
def quad_tables(a, w, o, c, qc, qm, pc, pm):
    """Tables over the 81 level combinations of a quad (coordinates 0-3 as qc[0], 4-7 as
    qc[1]): the summed squared errors (qc) and the least cost of one wrong sign among them
    (qm), built from per-pair tables (pc, pm: (2, 9) work arrays, reused: allocated per call
    they cost 4-8 % of the encoder's time)."""
    for h in range(2):
        for p in range(2):
            k0 = o + 4 * h + 2 * p
            for l1 in range(3):
                q1 = c * LEVELS[l1]
                r1 = a[k0 + 1] - q1
                e1 = w[k0 + 1] * r1 * r1
                m1 = 4.0 * w[k0 + 1] * a[k0 + 1] * q1
                for l0 in range(3):
                    q0 = c * LEVELS[l0]
                    r0 = a[k0] - q0
                    pc[p, l0 + 3 * l1] = w[k0] * r0 * r0 + e1
                    pm[p, l0 + 3 * l1] = min(4.0 * w[k0] * a[k0] * q0, m1)
        for hi in range(9):
            for lo in range(9):
                qc[h, lo + 9 * hi] = pc[0, lo] + pc[1, hi]
                qm[h, lo + 9 * hi] = min(pm[0, lo], pm[1, hi])


@njit
def exact_group(a, w, o, odd, c, lev, quads, qc, qm, pc, pm, by_first, first_start, prune):
    """The optimal (grid index, wrong-sign element or -1, error) over the whole codebook.

    Errors add over coordinates, so a point's error is two lookups in per-quad tables; with odd
    parity the cheapest wrong sign, (a + q)^2 - (a - q)^2 = 4 a q, is added too. With `prune`
    the points are visited by their first quad, the one of the per-coordinate nearest levels
    first, and a first quad whose error plus the least second-quad error already exceeds the
    best is skipped with all its points (a wrong-sign cost is never negative); ties go to the
    lower grid index, so the result is the plain scan's.
    """
    quad_tables(a, w, o, c, qc, qm, pc, pm)
    best_j, best_e = 0, np.inf
    if not prune:
        for j in range(quads.shape[0]):
            q0 = quads[j, 0]
            q1 = quads[j, 1]
            e = qc[0, q0] + qc[1, q1]
            if odd:
                e += min(qm[0, q0], qm[1, q1])
            if e < best_e:
                best_e = e
                best_j = j
    else:
        least_second = np.inf
        for q in range(81):
            least_second = min(least_second, qc[1, q])
        near = 0   # the first quad's code at the nearest levels
        t0 = c * MIDPOINTS[0]
        t1 = c * MIDPOINTS[1]
        for k in range(4):
            v = a[o + k]
            near += (0 if v < t0 else (1 if v < t1 else 2)) * POW3[k]
        best_j = quads.shape[0]
        for step in range(82):
            q0 = near if step == 0 else step - 1
            if step > 0 and q0 == near:
                continue
            lo = first_start[q0]
            hi = first_start[q0 + 1]
            if lo == hi or qc[0, q0] + least_second > best_e:
                continue
            for p in range(lo, hi):
                j = by_first[p]
                q1 = quads[j, 1]
                e = qc[0, q0] + qc[1, q1]
                if odd:
                    e += min(qm[0, q0], qm[1, q1])
                if e < best_e or (e == best_e and j < best_j):
                    best_e = e
                    best_j = j
    best_f = -1
    if odd:
        m = np.inf
        for k in range(8):
            d = w[o + k] * a[o + k] * LEVELS[lev[best_j, k]]
            if d < m:
                m = d
                best_f = k
    return best_j, best_f, best_e


@njit
def fit_subblock_scale(a, w, o, n_groups, odd, g0, book, tab):
    """(scale, curvature) of one sub-block: the least-squares scale of the best choice over a
    scan of candidate scales and refits, and sum w q^2 of that choice, so that near the scale the
    error grows as curvature * (c - scale)^2. (0, 0) if the sub-block is empty. tab: an (8, 3)
    float64 work array (best_point's)."""
    lev, _, gmap, start, nb, _, _, _ = book
    amax = 0.0
    for i in range(8 * n_groups):
        amax = max(amax, a[o + i])
    if amax < GROUP_EPS:
        return 0.0, 0.0
    best = 0.0
    best_c = 0.0
    best_q2 = 0.0
    for step in range(SCALE_STEPS + REFITS):
        if step < SCALE_STEPS:
            c = amax / (LEVELS[2] * (SCALE_RATIO0 + step * SCALE_RATIO_STEP))
        elif best_c > 0:
            c = best_c   # refit: re-snap at the least-squares scale of the best so far
        else:
            break
        sqx = 0.0
        sq2 = 0.0
        for g in range(n_groups):
            og = o + 8 * g
            j, f, e = best_group(a, w, og, odd[g0 + g], c, lev, gmap, start, nb, tab)
            px, p2 = point_moments(a, w, og, f, lev, j)
            sqx += px
            sq2 += p2
        if sq2 > 0 and sqx > 0 and sqx * sqx > best * sq2:
            best = sqx * sqx / sq2
            best_c = sqx / sq2
            best_q2 = sq2
        elif step >= SCALE_STEPS:
            break
    return best_c, best_q2


@njit
def nearest_subscale(d, c):
    return min(15, max(0, nearest_int(4.0 * c / d - 0.5)))


@njit
def choose_block_scale(cs, cq, n_sub):
    """The f16 d that best serves the sub-block scales cs, under the quadratic error model
    cq * (c - cs)^2 of each sub-block. d0 puts the largest scale at sub-scale 15."""
    cmax = 0.0
    for ib in range(n_sub):
        cmax = max(cmax, cs[ib])
    best_d = np.float32(0.0)
    best_e = np.inf
    for fd in D_FACTORS:
        d = round_to_f16(cmax * 4.0 / 15.5 * fd)
        if d == 0 or not np.isfinite(d):
            continue
        e = 0.0
        for ib in range(n_sub):
            r = group_scale(d, nearest_subscale(d, cs[ib])) - cs[ib]
            e += cq[ib] * r * r
        if e < best_e:
            best_e = e
            best_d = d
    return best_d


@njit
def encode_block(x, xo, imp, n_groups, book, parity, ws):
    """Choose d, the 4-bit sub-scales and every group's grid point and signs for the 256-block
    at x[xo:]. The choices are left in ws (see scratch); returns the (f16-exact) d."""
    a, w, neg, odd, cs, cq, idx, flips, subs, qc, qm, tidx, tflips, pc, pm, tab = ws
    lev, quads, gmap, start, nb, by_first, first_start, prune = book
    n_sub = 32 // n_groups
    block_weights(x, imp, xo, w)
    for g in range(32):
        bits = 0
        for k in range(8):
            v = x[xo + 8 * g + k]
            a[8 * g + k] = abs(v)
            if v < 0:
                bits |= 1 << k
        neg[g] = bits
        n = 0
        for k in range(8):
            n += (bits >> k) & 1
        odd[g] = parity and n % 2 == 1
        idx[g] = 0
        flips[g] = -1
    for ib in range(n_sub):
        subs[ib] = 0
        cs[ib], cq[ib] = fit_subblock_scale(a, w, 8 * n_groups * ib, n_groups, odd,
                                            n_groups * ib, book, tab)
    d = choose_block_scale(cs, cq, n_sub)
    if d == 0:
        return d
    for ib in range(n_sub):
        # the sub-scales next to the ideal one, scored by the exact search at the decoder's scale
        # (s0 first, then outward: a candidate is dropped once its error passes the best one's,
        # which is most often s0's; at a tie the lower sub-scale wins, as in a plain scan)
        s0 = nearest_subscale(d, cs[ib])
        best_e = np.inf
        for t in range(2 * SUBSCALE_REACH + 1):
            s = s0 + (t + 1) // 2 * (1 if t % 2 else -1)
            if s < 0 or s > 15:
                continue
            c = group_scale(d, s)
            e = 0.0
            for g in range(n_groups):
                gg = n_groups * ib + g
                tidx[g], tflips[g], eg = exact_group(a, w, 8 * gg, odd[gg], c, lev, quads, qc, qm, pc, pm,
                                                     by_first, first_start, prune)
                e += eg
                if e > best_e:
                    break
            if e < best_e or (e == best_e and s < subs[ib]):
                best_e = e
                subs[ib] = s
                idx[n_groups * ib:n_groups * (ib + 1)] = tidx[:n_groups]
                flips[n_groups * ib:n_groups * (ib + 1)] = tflips[:n_groups]
    return d


@njit
def scratch():
    """Per-row work arrays for encode_block."""
    return (np.empty(256, np.float32), np.empty(256, np.float64), np.empty(32, np.int64),
            np.empty(32, np.bool_), np.empty(32, np.float64), np.empty(32, np.float64),
            np.empty(32, np.int64), np.empty(32, np.int64), np.empty(32, np.int64),
            np.empty((2, 81), np.float64), np.empty((2, 81), np.float64),
            np.empty(4, np.int64), np.empty(4, np.int64),
            np.empty((2, 9), np.float64), np.empty((2, 9), np.float64), np.empty((8, 3), np.float64))


@njit(inline="always")
def sign_bits(neg, flip):
    """The 8 stored sign bits: the signs of x, with the wrong-sign element (if any) toggled."""
    return neg ^ (1 << flip) if flip >= 0 else neg


@njit(inline="always")
def put_subscales(out, at, subs):
    for j in range(8):
        out[at + j] = subs[2 * j] | (subs[2 * j + 1] << 4)


@njit
def encode_iq2_xxs(x, imp, out):
    ws = scratch()
    _, _, neg, _, _, _, idx, flips, subs, _, _, _, _, _, _, _ = ws
    for b in range(x.shape[0] // 256):
        o = 66 * b
        put_f16(out, o, encode_block(x, 256 * b, imp, 4, XXS_TABLES,
                                     True, ws))
        for ib in range(8):
            aux = subs[ib] << 28
            for l in range(4):
                g = 4 * ib + l
                out[o + 2 + 8 * ib + l] = idx[g]
                aux |= (sign_bits(neg[g], flips[g]) & 127) << (7 * l)
            put_u32(out, o + 6 + 8 * ib, aux)


@njit
def encode_iq2_xs(x, imp, out):
    ws = scratch()
    _, _, neg, _, _, _, idx, flips, subs, _, _, _, _, _, _, _ = ws
    for b in range(x.shape[0] // 256):
        o = 74 * b
        put_f16(out, o, encode_block(x, 256 * b, imp, 2, XS_TABLES,
                                     True, ws))
        for i in range(32):
            put_u16(out, o + 2 + 2 * i, idx[i] | ((sign_bits(neg[i], flips[i]) & 127) << 9))
        put_subscales(out, o + 66, subs)


@njit
def encode_iq2_s(x, imp, out):
    ws = scratch()
    _, _, neg, _, _, _, idx, _, subs, _, _, _, _, _, _, _ = ws
    for b in range(x.shape[0] // 256):
        o = 82 * b
        put_f16(out, o, encode_block(x, 256 * b, imp, 2, S_TABLES,
                                     False, ws))
        for i in range(32):
            out[o + 2 + i] = idx[i] & 255
            out[o + 34 + i] = neg[i]
        for j in range(8):
            h = 0
            for i in range(4):
                h |= (idx[4 * j + i] >> 8) << (2 * i)
            out[o + 66 + j] = h
        put_subscales(out, o + 74, subs)


# ---------------------------------------------------------------------------------------------
# Unpackers for the integer kernels (grid_codes.py says what they yield)

@njit(inline="always")
def unpack_iq2_xxs(w, o, u, rec, y):
    put_d(rec, w, o)
    for ib in range(8):
        at = o + 2 + 8 * ib
        aux = u32(w, at + 4)
        put_code(rec, ib, aux >> 28)
        for l in range(4):
            put_entry(u, 32 * ib + 8 * l, 8, w[at + l], KSIGNS[(aux >> (7 * l)) & 127])


@njit(inline="always")
def unpack_iq2_xs(w, o, u, rec, y):
    put_d(rec, w, o)
    for i in range(32):
        q = u16(w, o + 2 + 2 * i)
        put_entry(u, 8 * i, 8, q & 511, KSIGNS[q >> 9])
    for j in range(16):
        put_code(rec, j, packed_nibble(w, o + 66, j))


@njit(inline="always")
def unpack_iq2_s(w, o, u, rec, y):
    put_d(rec, w, o)
    for i in range(32):
        index = w[o + 2 + i] | (((w[o + 66 + i // 4] >> (2 * (i % 4))) & 3) << 8)
        put_entry(u, 8 * i, 8, index, w[o + 34 + i])
    for j in range(16):
        put_code(rec, j, packed_nibble(w, o + 74, j))


# u: the sign and index bits of grid_codes.py; scale codes in nibbles
IQ2_XXS = register("IQ2_XXS", "iq2", decode_iq2_xxs, encode_iq2_xxs, Packing("iq2_xxs", "f16_nib_quarter", 32, 64, unpack_iq2_xxs))
IQ2_XS = register("IQ2_XS", "iq2", decode_iq2_xs, encode_iq2_xs, Packing("iq2_xs", "f16_nib_quarter", 16, 64, unpack_iq2_xs))
IQ2_S = register("IQ2_S", "iq2", decode_iq2_s, encode_iq2_s, Packing("iq2_s", "f16_nib_quarter", 16, 64, unpack_iq2_s))
