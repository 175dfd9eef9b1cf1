"""Kernels for float weight matrices (F32, F16, BF16), reading the file's own bytes in place.

Every product is a float32 activation times a weight widened exactly to float32 (F16 by
vcvtph2ps, BF16 by a 16-bit shift, F32 as it is), added up in float32 by fused multiply-adds:
what importance-matrix collection and perplexity need, with no rounding of the activations.
The weights are never copied for the model's lifetime: resident memory is the file's pages.

Matrix-vector (one token; memory-bound): lanes over columns. Each output row is a dot product
of 16-column steps, four accumulators deep (an FMA's latency is four steps), summed across the
lanes at the end. A row whose length is not whole steps ends with the last 16 columns of the
row against x masked to the columns not yet counted (an overlapping window: nothing is read
outside the row).

Matrix-matrix (a prompt; compute-bound): lanes over tokens, weights broadcast, as a blocked
GEMM. The activations are transposed once per product into token panels (xt: for each block of
16 * TV tokens, column after column of 16 * TV floats; tokens padded with zeros). A task takes
a few blocks of SUB weight rows and walks the columns in chunks of KC: it widens the chunk of its rows
into a float32 tile (L1/L2), then for each token panel and each SUB rows of the tile runs

    for each column k of the chunk:  acc[r][v] += tile[r, k] (broadcast) * xt[k, 16 v .. 16 v + 15]

with SUB x TV accumulators in zmm registers (loaded from and stored back to the task's sums once
per chunk): per column, TV vector loads and SUB broadcasts feed SUB * TV FMAs, no reduction
across lanes. KC is a compile-time constant, so the tile's rows are constant displacements from
one register. A panel's chunk (KC x 16 TV floats) serves all the task's rows while it is in L1;
the whole of xt is read once per task, so tasks are as large as the thread count allows. Each task writes only its own output rows, and the order
of the sums does not depend on the number of threads.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange

from lowbit.quant.jit_cache import cached_kernel

from .simd import (add_f32x16, fma_f32x16, load1, load_bf16x16, load_f16x16, load_f32x16,
                   reduce_add_f32x16, splat_f32, store_f32x16, transpose_f32_16x16, zeros_f32x16)

F32, F16, BF16 = 0, 1, 2
FORMATS = {"F32": F32, "F16": F16, "BF16": BF16}
LANES = 16
SUB = 12          # weight rows per register block (each broadcast feeds TV FMAs)
MAX_TASK_SUBS = 8     # register blocks per matrix-matrix task at most (they share each panel)
KC = 256          # tile columns per chunk
MIN_COLS = LANES  # shorter rows go to the generic kernels (the tail window needs 16 columns)


def weight_format(qtype) -> int | None:
    """The float kernels' format code for a float type, None for any other type."""
    return FORMATS.get(qtype.name)


def weight_view(rows: np.ndarray, fmt: int) -> np.ndarray:
    """The (n_rows, row_bytes) bytes of a float matrix as the kernels read them, without a copy:
    float32 values for F32, the raw 16-bit patterns (uint16) for F16 and BF16."""
    return rows.view(np.float32 if fmt == F32 else np.uint16)


def token_vectors(n_tokens: int) -> int:
    """Token vectors per block: one for short prompts (less padding), two otherwise."""
    return 1 if n_tokens <= LANES else 2


def _widener(fmt: int):
    @njit(inline="always")
    def widen(w, at):
        """16 weights from element `at` of the flat weight array, as float32."""
        if fmt == F16:
            return load_f16x16(w, at)
        if fmt == BF16:
            return load_bf16x16(w, at)
        return load_f32x16(w, at)
    return widen


@lru_cache(maxsize=None)
def matvec_kernel(fmt: int):
    """matvec(w, x, xm, out): out[r] = sum_k widen(w[r, k]) x[k]; w flat (n_rows * n_cols),
    xm the last 16 entries of x with those of the whole steps zeroed (the tail window)."""
    widen = _widener(fmt)

    @cached_kernel(parallel=True)
    def matvec(w, x, xm, out):
        n_cols = x.shape[0]
        full = n_cols // LANES * LANES
        for r in prange(out.shape[0]):
            base = r * n_cols
            a0 = zeros_f32x16()
            a1 = zeros_f32x16()
            a2 = zeros_f32x16()
            a3 = zeros_f32x16()
            c = 0
            while c + 4 * LANES <= full:
                a0 = fma_f32x16(widen(w, base + c), load_f32x16(x, c), a0)
                a1 = fma_f32x16(widen(w, base + c + 16), load_f32x16(x, c + 16), a1)
                a2 = fma_f32x16(widen(w, base + c + 32), load_f32x16(x, c + 32), a2)
                a3 = fma_f32x16(widen(w, base + c + 48), load_f32x16(x, c + 48), a3)
                c += 4 * LANES
            while c < full:
                a0 = fma_f32x16(widen(w, base + c), load_f32x16(x, c), a0)
                c += LANES
            if full < n_cols:
                a1 = fma_f32x16(widen(w, base + n_cols - LANES), load_f32x16(xm, 0), a1)
            out[r] = reduce_add_f32x16(add_f32x16(add_f32x16(a0, a1), add_f32x16(a2, a3)))

    return matvec


@lru_cache(maxsize=None)
def matmul_kernel(fmt: int, tv: int):
    """matmul(w, xs, xt, tp, task_subs, out): out (T, N) = xs (T, K) @ widen(w).T, w flat
    (N * K); xt scratch for the transposed activations, of (K rounded up to whole chunks) * tp
    floats, with tp the tokens rounded up to whole blocks of 16 * tv; tasks of task_subs * SUB
    rows."""
    widen = _widener(fmt)
    block = LANES * tv

    @njit(inline="always")
    def panel_at(kp, k, t):
        """Where xt keeps activation (token t, column k): panels of `block` tokens, each kp
        columns of `block` floats, so that the kernel reads a panel front to back."""
        return (t // block) * kp * block + k * block + t % block

    @njit(inline="always")
    def transpose(xs, xt, kp, tp, kb):
        """Columns 16 kb .. 16 kb + 15 of xs into the panels, zero past xs."""
        n_tokens, n_cols = xs.shape
        flat = xs.reshape(-1)
        k0 = kb * LANES
        if k0 + LANES <= n_cols:
            full = n_tokens // LANES * LANES
            for t0 in range(0, full, LANES):
                transpose_f32_16x16(flat, t0 * n_cols + k0, n_cols, xt, panel_at(kp, k0, t0), block)
            for t in range(full, n_tokens):
                for k in range(k0, k0 + LANES):
                    xt[panel_at(kp, k, t)] = flat[t * n_cols + k]
        else:
            for t in range(n_tokens):
                for k in range(k0, k0 + LANES):
                    xt[panel_at(kp, k, t)] = flat[t * n_cols + k] if k < n_cols else np.float32(0.0)
        for t in range(n_tokens, tp):
            for k in range(k0, k0 + LANES):
                xt[panel_at(kp, k, t)] = np.float32(0.0)

    @njit(inline="always")
    def fill_tile(w, r0, n_rows, n_cols, c0, tile, window):
        """tile[r, :] = columns c0 .. c0 + KC of row r0 + r, widened; zero past the matrix."""
        full = n_cols // LANES * LANES
        for r in range(tile.shape[0] // KC):
            row = r0 + r
            for j in range(0, KC, LANES):
                col = c0 + j
                if row < n_rows and col + LANES <= full:
                    store_f32x16(tile, r * KC + j, widen(w, row * n_cols + col))
                else:
                    store_f32x16(tile, r * KC + j, zeros_f32x16())
                    if row < n_rows and col < n_cols:
                        # the row's last partial step: from the window of its last 16 columns
                        store_f32x16(window, 0, widen(w, row * n_cols + n_cols - LANES))
                        for i in range(n_cols - col):
                            tile[r * KC + j + i] = window[LANES - (n_cols - col) + i]

    @njit(inline="always")
    def four_rows(tile, at, xa, xb, a0, a1, a2, a3, b0, b1, b2, b3):
        """Tile rows at, at + KC, at + 2 KC, at + 3 KC (one column) times token vectors xa, xb."""
        w = splat_f32(load1(tile, at))
        a0 = fma_f32x16(w, xa, a0)
        if tv == 2:
            b0 = fma_f32x16(w, xb, b0)
        w = splat_f32(load1(tile, at + KC))
        a1 = fma_f32x16(w, xa, a1)
        if tv == 2:
            b1 = fma_f32x16(w, xb, b1)
        w = splat_f32(load1(tile, at + 2 * KC))
        a2 = fma_f32x16(w, xa, a2)
        if tv == 2:
            b2 = fma_f32x16(w, xb, b2)
        w = splat_f32(load1(tile, at + 3 * KC))
        a3 = fma_f32x16(w, xa, a3)
        if tv == 2:
            b3 = fma_f32x16(w, xb, b3)
        return a0, a1, a2, a3, b0, b1, b2, b3

    @njit(inline="always")
    def get(sums, at, tp):
        """The sums of one row and token block (a, b): at = row * tp + first token."""
        return load_f32x16(sums, at), (load_f32x16(sums, at + LANES) if tv == 2 else zeros_f32x16())

    @njit(inline="always")
    def put(sums, at, a, b):
        store_f32x16(sums, at, a)
        if tv == 2:
            store_f32x16(sums, at + LANES, b)

    @njit(inline="always")
    def sub_block(tile, at, xt, xk, sums, sa, tp):
        """SUB tile rows from row offset `at` times one panel chunk from xk, added to the sums
        of rows sa / tp .. (sa: row * tp + first token)."""
        a0, b0 = get(sums, sa, tp)
        a1, b1 = get(sums, sa + tp, tp)
        a2, b2 = get(sums, sa + 2 * tp, tp)
        a3, b3 = get(sums, sa + 3 * tp, tp)
        a4, b4 = get(sums, sa + 4 * tp, tp)
        a5, b5 = get(sums, sa + 5 * tp, tp)
        a6, b6 = get(sums, sa + 6 * tp, tp)
        a7, b7 = get(sums, sa + 7 * tp, tp)
        a8, b8 = get(sums, sa + 8 * tp, tp)
        a9, b9 = get(sums, sa + 9 * tp, tp)
        a10, b10 = get(sums, sa + 10 * tp, tp)
        a11, b11 = get(sums, sa + 11 * tp, tp)
        for k in range(KC):
            xa = load_f32x16(xt, xk)
            xb = load_f32x16(xt, xk + LANES) if tv == 2 else xa
            a0, a1, a2, a3, b0, b1, b2, b3 = four_rows(
                tile, at + k, xa, xb, a0, a1, a2, a3, b0, b1, b2, b3)
            a4, a5, a6, a7, b4, b5, b6, b7 = four_rows(
                tile, at + 4 * KC + k, xa, xb, a4, a5, a6, a7, b4, b5, b6, b7)
            a8, a9, a10, a11, b8, b9, b10, b11 = four_rows(
                tile, at + 8 * KC + k, xa, xb, a8, a9, a10, a11, b8, b9, b10, b11)
            xk += block
        put(sums, sa, a0, b0)
        put(sums, sa + tp, a1, b1)
        put(sums, sa + 2 * tp, a2, b2)
        put(sums, sa + 3 * tp, a3, b3)
        put(sums, sa + 4 * tp, a4, b4)
        put(sums, sa + 5 * tp, a5, b5)
        put(sums, sa + 6 * tp, a6, b6)
        put(sums, sa + 7 * tp, a7, b7)
        put(sums, sa + 8 * tp, a8, b8)
        put(sums, sa + 9 * tp, a9, b9)
        put(sums, sa + 10 * tp, a10, b10)
        put(sums, sa + 11 * tp, a11, b11)

    @cached_kernel(parallel=True)
    def matmul(w, xs, xt, tp, task_subs, out):
        n_tokens, n_cols = xs.shape
        n_rows = out.shape[1]
        kp = xt.shape[0] // tp
        task_rows = task_subs * SUB
        for kb in prange(kp // LANES):
            transpose(xs, xt, kp, tp, kb)
        for g in prange((n_rows + task_rows - 1) // task_rows):
            r0 = g * task_rows
            subs = min(task_rows, n_rows - r0 + SUB - 1) // SUB    # register blocks with rows
            tile = np.empty(task_rows * KC, np.float32)
            window = np.empty(LANES, np.float32)
            sums = np.zeros(task_rows * tp, np.float32)          # sums[r * tp + t]
            for c0 in range(0, kp, KC):
                fill_tile(w, r0, n_rows, n_cols, c0, tile, window)
                for t0 in range(0, tp, block):
                    xk = panel_at(kp, c0, t0)
                    for s in range(subs):
                        sub_block(tile, s * SUB * KC, xt, xk, sums, s * SUB * tp + t0, tp)
            for t in range(n_tokens):
                for r in range(min(task_rows, n_rows - r0)):
                    out[t, r0 + r] = sums[r * tp + t]

    return matmul


def matvec(w: np.ndarray, fmt: int, x: np.ndarray, out: np.ndarray) -> None:
    """out = widen(w) @ x for w (n_rows, n_cols) from weight_view, x float32 (n_cols,)."""
    n_cols = w.shape[1]
    xm = np.zeros(LANES, np.float32)
    tail = n_cols % LANES
    if tail:
        xm[LANES - tail:] = x[n_cols - tail:]
    matvec_kernel(fmt)(w.reshape(-1), x, xm, out)


def matmul(w: np.ndarray, fmt: int, xs: np.ndarray, out: np.ndarray) -> None:
    """out (T, n_rows) = xs (T, n_cols) @ widen(w).T for w from weight_view."""
    n_tokens, n_cols = xs.shape
    tv = token_vectors(n_tokens)
    block = LANES * tv
    tp = -(-n_tokens // block) * block
    xt = _scratch(-(-n_cols // KC) * KC * tp)
    matmul_kernel(fmt, tv)(w.reshape(-1), xs, xt, tp, task_subs(w.shape[0]), out)


def task_subs(n_rows: int) -> int:
    """Register blocks per task: as many as leave each thread about four tasks (fewer tasks
    read the transposed activations fewer times; enough of them keep the threads balanced)."""
    return max(1, min(MAX_TASK_SUBS, n_rows // (SUB * 4 * numba.get_num_threads())))


_local = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A float32 buffer of `size` for the transposed activations, kept between calls (a prompt
    makes hundreds of products; a fresh allocation of megabytes each time costs page faults)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(size, np.float32)
    return buf[:size]
