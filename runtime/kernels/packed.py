"""Integer kernels over repacked weights (repack.py) and int8-quantized activations.

Activations are quantized once per product, per token, in blocks of 32, as ggml's Q8_0 does,
but in up to three int8 planes so that the precision is a choice and not a fixed loss:

    x ~ dx * (q1 + q2 / 254 + q3 / 254^2)     dx = max|x| / 127 over the block
    q1 = round(x / dx);  q2, q3 = the rounded residuals at 254x finer steps; all in -127..127

The error per element is at most dx / 2 / 254^(P-1) for P planes: 1/254 of the block's largest
|x| for P = 1 (llama.cpp's Q8_0 activations), 1/64516 for P = 2, about 6e-8 for P = 3 (the
rounding of float32 itself). The default is 3 (ACTIVATION_PLANES): the forward pass then
agrees with a float64 reference to ~1e-6 of the logit range, where one plane gives ~2e-2 on
the synthetic test models. Each plane costs one more vpdpbusd per 64 weight bytes loaded.

A weight sub-block is w = scale * u - min (layout.py; u the decoded value bytes), so for one
row and sub-block

    sum_k w_k x~_k = scale * dx * (I1 + I23 / 254^2)  -  min * dx * (S1 + S23 / 254^2)

with the integer dot products I1 = sum u q1, I23 = 254 * sum u q2 + sum u q3 (vpdpbusd: 16 rows
x 4 columns per instruction, the activation bytes broadcast), and the activation sums
S1 = sum q1, S23 = 254 * sum q2 + sum q3 (per 16 columns, made with the quantization). For
symmetric types (min = OFF * scale) the min term is taken off before the scale multiplies:
I1 - OFF * S1, both integers below 2^24, so exact in float32; OFF is per row, so that matrices
of different symmetric types can be stacked into one product (StackedMatrix). All integers fit in int32: |I23| <= 255 * 127 * 32 * 255 < 2^29.
So the kernels compute decode(W) @ x~ up to float32 rounding in the per-sub-block products
(tests/test_kernels.py holds both that and the bound against x).

Parallel over groups of 16 output rows (prange; each task writes only its rows). With 4 or more
tokens a task first decodes its group (every layout's step and scale decoders) into a tile of
value bytes (16 x n_cols) and float32 scales, then walks the tokens 4 at a time: the 64 bytes
loaded for 4 columns serve 4 tokens (x P planes) before the next load, and the tile stays in
L1/L2 while the tokens stream past. With fewer tokens (generation) the steps are decoded in
registers straight from the resident layout, which is all the memory traffic there is.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from lowbit.quant.jit_cache import cached_kernel

from .layout import GROUP, Layout
from .simd import store_bytes64
from .simd import (add_i32x16, dot_u8s8, fma_f32x16, load1, load_bytes64, load_f32x16,
                   max_abs2_f32x16, max_f32x16, min_f32x16, mul_f32x16, reduce_add_i32x16,
                   rint_f32x16, shl_i32x16, splat_bytes4, splat_f32, store_f32x16, store_i8x16,
                   sub_f32x16, sub_i32x16, to_f32x16, to_i32x16, zeros_f32x16, zeros_i32x16)

QBLOCK = 32      # activation quantization block
STEP = 254       # ratio of consecutive plane steps
ACTIVATION_PLANES = 3

PARALLEL_QUANTIZE_TOKENS = 16   # quantize activations on all threads from this many tokens on


@lru_cache(maxsize=None)
def quantizer(planes: int, parallel: bool):
    """quantize(x, qx, dx, isum): x (T, K) -> qx int8 [P, T*K], dx [T*K/32], isum int32 [2, T*K/16].

    Sixteen values at a time: q = rint(v) clamped to -127..127, the residual (v - q) * 254 goes
    on to the next plane. Plain IEEE float32 arithmetic (no fastmath): the first plane is, byte
    for byte, round-half-even(x * (1 / d)) with d = max|x| / 127."""

    @cached_kernel(parallel=parallel)
    def quantize(x, qx, dx, isum):
        n_cols = x.shape[1]
        nb = n_cols // QBLOCK
        lim = splat_f32(np.float32(127.0))
        nlim = splat_f32(np.float32(-127.0))
        step = splat_f32(np.float32(STEP))
        for t in prange(x.shape[0]):
            xt = x[t]
            for b in range(nb):
                base = b * QBLOCK
                va = load_f32x16(xt, base)
                vb = load_f32x16(xt, base + 16)
                amax = max_abs2_f32x16(va, vb)
                d = amax / np.float32(127.0)
                inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
                dx[t * nb + b] = d
                at = t * n_cols + base
                k = 2 * (t * nb + b)
                ea = mul_f32x16(va, splat_f32(inv))
                eb = mul_f32x16(vb, splat_f32(inv))
                lo_a = 0
                lo_b = 0
                for p in range(planes):
                    ra = min_f32x16(lim, max_f32x16(nlim, rint_f32x16(ea)))
                    rb = min_f32x16(lim, max_f32x16(nlim, rint_f32x16(eb)))
                    qa = to_i32x16(ra)
                    qb = to_i32x16(rb)
                    store_i8x16(qx[p], at, qa)
                    store_i8x16(qx[p], at + 16, qb)
                    if p == 0:
                        isum[0, k] = reduce_add_i32x16(qa)
                        isum[0, k + 1] = reduce_add_i32x16(qb)
                    else:
                        # lo = 254 * sum(q2) + sum(q3)
                        lo_a = lo_a * STEP + reduce_add_i32x16(qa)
                        lo_b = lo_b * STEP + reduce_add_i32x16(qb)
                    if p + 1 < planes:
                        ea = mul_f32x16(sub_f32x16(ea, ra), step)
                        eb = mul_f32x16(sub_f32x16(eb, rb), step)
                if planes == 2:
                    lo_a *= STEP
                    lo_b *= STEP
                isum[1, k] = lo_a
                isum[1, k + 1] = lo_b

    return quantize


class QuantizedActivations:
    """Activations (T, K) quantized to int8 planes in blocks of 32 (see the module docstring)."""

    __slots__ = ("n_tokens", "n_cols", "planes", "qx", "dx", "isum")

    def __init__(self, x: np.ndarray, planes: int = ACTIVATION_PLANES):
        n_tokens, n_cols = x.shape
        if n_cols % QBLOCK:
            raise ValueError(f"activations of length {n_cols} are not whole blocks of {QBLOCK}")
        if planes not in (1, 2, 3):
            raise ValueError(f"activation planes must be 1, 2 or 3, not {planes}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.n_tokens, self.n_cols, self.planes = n_tokens, n_cols, planes
        self.qx = np.empty((planes, n_tokens * n_cols), np.int8)     # every byte is written
        self.dx = np.empty(n_tokens * n_cols // QBLOCK, np.float32)
        self.isum = np.empty((2, n_tokens * n_cols // 16), np.int32)
        quantizer(planes, n_tokens >= PARALLEL_QUANTIZE_TOKENS)(x, self.qx, self.dx, self.isum)

    def dequantize(self) -> np.ndarray:
        """x~, the activations the kernels multiply by (float64, for tests)."""
        q = np.zeros(self.qx.shape[1], np.float64)
        for p in range(self.planes):
            q += self.qx[p].astype(np.float64) / float(STEP) ** p
        dx = np.repeat(self.dx.astype(np.float64), QBLOCK)
        return (q * dx).reshape(self.n_tokens, self.n_cols)


@lru_cache(maxsize=None)
def packed_kernel(key: tuple, planes: int):
    """out (T, N) = W x for W in a layout with this kernel_key (layout.py), P activation planes:
    kernel(q, offsets, qx, dx, isum, n_tokens, n_rows, out)."""
    layout = Layout(*key[:4], offset=-1 if key[4] else 0)
    step_pair = layout.weights.pairs
    scale_of = layout.scales.scale
    min_of = layout.scales.minimum
    affine = layout.affine
    sub = layout.sub
    block = layout.block
    nsteps = layout.nsteps        # steps per block
    steps = sub // 4              # steps per sub-block
    n_sub = layout.n_sub          # sub-blocks per block
    weight_bytes = layout.weight_bytes
    block_bytes = layout.block_bytes
    halves = sub // 16          # isum entries (per 16 columns) per sub-block
    lo = 1.0 / STEP ** 2        # weight of the finer planes' integer sums

    @njit(inline="always")
    def low_planes(i2, i3):
        """254 * i2 + i3 (two shifts and a subtraction instead of a multiply)."""
        v = sub_i32x16(shl_i32x16(i2, 8), shl_i32x16(i2, 1))
        return add_i32x16(v, i3) if planes >= 3 else v

    @njit(inline="always")
    def finish(acc, i1, i2, i3, scv, mnv, offv, tb, dsc, s1f, s23f, xm):
        """acc + one sub-block's contribution for one token (i1..i3: the planes' integer dots;
        tb: the token's sub-block index into the per-(token, sub-block) scalars).

        Symmetric types: scale * d * ((I1 - OFF S1) + (I23 - OFF S23) / 254^2), OFF per row
        (offv: stacked matrices may mix types). I1 and OFF * S1 are integers below 2^24, so the
        float subtraction (one fused multiply-add) is exact."""
        sd = mul_f32x16(scv, splat_f32(load1(dsc, tb)))
        v = to_f32x16(i1)
        if not affine:
            v = fma_f32x16(offv, splat_f32(-load1(s1f, tb)), v)
        if planes >= 2:
            v23 = to_f32x16(low_planes(i2, i3))
            if not affine:
                v23 = fma_f32x16(offv, splat_f32(-load1(s23f, tb)), v23)
            v = fma_f32x16(splat_f32(np.float32(lo)), v23, v)
        acc = fma_f32x16(sd, v, acc)
        if affine:
            acc = fma_f32x16(mnv, splat_f32(load1(xm, tb)), acc)
        return acc

    @njit(inline="always")
    def expand(qg, n_blk, tile, sct, mnt):
        """A group's resident layout -> value bytes (16 x n_cols, step after step) and float32
        scales and mins (16 per sub-block), so that the token loop reads plain bytes and the
        decoding is paid once per group, not per token."""
        for blk in range(n_blk):
            base = blk * block_bytes
            for s in range(0, nsteps, 2):
                wa, wb = step_pair(qg, base, nsteps, s)
                store_bytes64(tile, (blk * nsteps + s) * 64, wa)
                store_bytes64(tile, (blk * nsteps + s + 1) * 64, wb)
            for j in range(n_sub):
                at = (blk * n_sub + j) * GROUP
                store_f32x16(sct, at, scale_of(qg, base + weight_bytes, n_sub, j))
                if affine:
                    store_f32x16(mnt, at, min_of(qg, base + weight_bytes, n_sub, j))

    @njit(inline="always")
    def put(out, t, g, n_rows, acc):
        r0 = g * GROUP
        if r0 + GROUP <= n_rows:
            store_f32x16(out, t * n_rows + r0, acc)
        else:   # the last group of a matrix whose rows are not whole groups
            buf = np.empty(GROUP, np.float32)
            store_f32x16(buf, 0, acc)
            for i in range(n_rows - r0):
                out[t * n_rows + r0 + i] = buf[i]

    @cached_kernel(parallel=True, fastmath=True)
    def kernel(q, offsets, qx, dx, isum, n_tokens, n_rows, out):
        n_blk = q.shape[1] // block_bytes
        n_cols = n_blk * block
        n_subs = n_blk * n_sub          # sub-blocks per row
        # Per (token, sub-block) scalars, shared by every row group: the activation scale, the
        # activation sums (for the symmetric types' offsets), the affine types' -d * sum(x~).
        n_tb = n_tokens * n_subs
        dsc = np.empty(n_tb, np.float32)
        s1f = np.empty(n_tb, np.float32)
        s23f = np.empty(n_tb, np.float32)
        xm = np.empty(n_tb, np.float32)
        for t in range(n_tokens):
            for b in range(n_subs):
                tb = t * n_subs + b
                at = t * (n_cols // 16) + b * halves
                s1 = isum[0, at]
                s23 = isum[1, at]
                if halves == 2:
                    s1 += isum[0, at + 1]
                    s23 += isum[1, at + 1]
                d = dx[t * (n_cols // QBLOCK) + (b * sub) // QBLOCK]
                dsc[tb] = d
                s1f[tb] = np.float32(s1)
                s23f[tb] = np.float32(s23)
                xs = np.float32(s1) + np.float32(s23) * np.float32(lo) if planes >= 2 else np.float32(s1)
                xm[tb] = -d * xs
        p1 = qx[0]
        p2 = qx[min(1, planes - 1)]
        p3 = qx[min(2, planes - 1)]
        for g in prange(q.shape[0]):
            qg = q[g]
            offv = load_f32x16(offsets, g * GROUP)
            t = 0
            if n_tokens >= 4:
                tile = np.empty(n_cols * GROUP, np.uint8)
                sct = np.empty(n_subs * GROUP, np.float32)
                mnt = np.empty(n_subs * GROUP if affine else 0, np.float32)
                expand(qg, n_blk, tile, sct, mnt)
            else:
                tile = qg
                sct = np.empty(0, np.float32)
                mnt = sct
            while t + 4 <= n_tokens:
                a0 = zeros_f32x16()
                a1 = zeros_f32x16()
                a2 = zeros_f32x16()
                a3 = zeros_f32x16()
                x0 = t * n_cols
                x1 = x0 + n_cols
                x2 = x1 + n_cols
                x3 = x2 + n_cols
                for b in range(n_subs):
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
                    for s in range(steps):
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
                    mnv = load_f32x16(mnt, b * GROUP) if affine else scv
                    tb = t * n_subs + b
                    a0 = finish(a0, i0, j0, h0, scv, mnv, offv, tb, dsc, s1f, s23f, xm)
                    a1 = finish(a1, i1, j1, h1, scv, mnv, offv, tb + n_subs, dsc, s1f, s23f, xm)
                    a2 = finish(a2, i2, j2, h2, scv, mnv, offv, tb + 2 * n_subs, dsc, s1f, s23f, xm)
                    a3 = finish(a3, i3, j3, h3, scv, mnv, offv, tb + 3 * n_subs, dsc, s1f, s23f, xm)
                put(out, t, g, n_rows, a0)
                put(out, t + 1, g, n_rows, a1)
                put(out, t + 2, g, n_rows, a2)
                put(out, t + 3, g, n_rows, a3)
                t += 4
            while t < n_tokens:
                a0 = zeros_f32x16()
                x0 = t * n_cols
                for blk in range(n_blk):
                    base = blk * block_bytes
                    for jj in range(n_sub):
                        # two accumulators for the first plane: the even and odd steps do not
                        # wait on each other (one token has no other independent work)
                        i0 = zeros_i32x16()
                        i1 = zeros_i32x16()
                        j0 = zeros_i32x16()
                        h0 = zeros_i32x16()
                        k0 = (blk * n_sub + jj) * sub
                        for s in range(0, steps, 2):
                            k = k0 + 4 * s
                            wa, wb = step_pair(qg, base, nsteps, jj * steps + s)
                            i0 = dot_u8s8(i0, wa, splat_bytes4(p1, x0 + k))
                            i1 = dot_u8s8(i1, wb, splat_bytes4(p1, x0 + k + 4))
                            if planes >= 2:
                                j0 = dot_u8s8(j0, wa, splat_bytes4(p2, x0 + k))
                                j0 = dot_u8s8(j0, wb, splat_bytes4(p2, x0 + k + 4))
                            if planes >= 3:
                                h0 = dot_u8s8(h0, wa, splat_bytes4(p3, x0 + k))
                                h0 = dot_u8s8(h0, wb, splat_bytes4(p3, x0 + k + 4))
                        scv = scale_of(qg, base + weight_bytes, n_sub, jj)
                        mnv = min_of(qg, base + weight_bytes, n_sub, jj) if affine else scv
                        a0 = finish(a0, add_i32x16(i0, i1), j0, h0, scv, mnv, offv,
                                    t * n_subs + blk * n_sub + jj, dsc, s1f, s23f, xm)
                put(out, t, g, n_rows, a0)
                t += 1

    return kernel


@lru_cache(maxsize=None)
def expander(layout: Layout):
    """expand(q, tile, sct, mnt): the whole matrix decoded by the kernels' own decoders (value
    bytes [G, 16 n_cols] step after step, scales and mins [G, 16 n_subs]); for tests."""
    step_weights = layout.weights.step
    scale_of = layout.scales.scale
    min_of = layout.scales.minimum
    nsteps, n_sub, weight_bytes, block_bytes = layout.nsteps, layout.n_sub, layout.weight_bytes, layout.block_bytes

    @njit
    def expand(q, tile, sct, mnt):
        for g in range(q.shape[0]):
            for blk in range(q.shape[1] // block_bytes):
                base = blk * block_bytes
                for s in range(nsteps):
                    store_bytes64(tile[g], (blk * nsteps + s) * 64, step_weights(q[g], base, nsteps, s))
                for j in range(n_sub):
                    at = (blk * n_sub + j) * GROUP
                    store_f32x16(sct[g], at, scale_of(q[g], base + weight_bytes, n_sub, j))
                    store_f32x16(mnt[g], at, min_of(q[g], base + weight_bytes, n_sub, j))

    return expand
