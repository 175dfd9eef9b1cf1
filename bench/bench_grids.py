"""The i-quant grid kernels (runtime/kernels/grids.py: the file's bits, grids decoded in
registers) against the byte-per-weight kernel (the grid decoded at load into one byte per
weight, packed.py's U8 format), at Qwen2.5-Coder-1.5B's FFN shapes.

    python bench/bench_grids.py [--types IQ2_XXS,IQ3_XXS] [--shapes 8960x1536,1536x8960]
                                [--tokens 1,512] [--threads 1] [--planes 1]

Weights: 64 rows encoded by lowbit's encoder from random normal values, repeated to the full
height (each copy at its own address, so nothing is shared in the caches). Each figure is the
best of several runs after a warm-up; the activations are quantized once outside the timing
(both kernels take the same QuantizedActivations).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from machine import describe  # noqa: E402
from synthetic import encode_rows  # noqa: E402

from lowbit.quant.types import by_name  # noqa: E402
from lowbit.runtime.kernels import QuantMatrix  # noqa: E402
from lowbit.runtime.kernels.grids import CODES, grid_kernel, repack_grid  # noqa: E402
from lowbit.runtime.kernels.packed import QuantizedActivations, packed_kernel  # noqa: E402
from lowbit.runtime.kernels.repack import UNPACKING, repack  # noqa: E402


def best_time(fn, min_time=1.0, max_reps=400) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--types", default="IQ2_XXS,IQ3_XXS")
    p.add_argument("--shapes", default="8960x1536,1536x8960")
    p.add_argument("--tokens", default="1,512")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--planes", type=int, default=1)
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(describe(args.threads))
    print(f"activation planes: {args.planes}\n")
    print("| type | rows x row length | T | grid B/w | U8 B/w | grid ms | U8 ms | U8 / grid | grid Gweights/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.types.split(","):
        qtype = by_name(name)
        for shape in args.shapes.split(","):
            n_rows, n_cols = map(int, shape.split("x"))
            base = encode_rows(rng.standard_normal((64, n_cols)).astype(np.float32), qtype)
            raw = np.tile(base.reshape(64, -1), (n_rows // 64, 1))
            m = QuantMatrix(raw.reshape(-1), qtype, n_rows, n_cols)
            spec = UNPACKING[name]
            u8 = repack(m.rows, qtype, n_rows, n_cols)      # the grid decoded to a byte per weight
            u8_kernel = packed_kernel(spec.fmt, spec.sub, spec.affine, spec.half, args.planes)
            q = repack_grid(m.rows, name, n_rows, n_cols)
            offsets = np.full(q.shape[0] * 16, CODES[name].offset, np.float32)
            for n_tokens in map(int, args.tokens.split(",")):
                qa = QuantizedActivations(rng.standard_normal((n_tokens, n_cols)).astype(np.float32), args.planes)
                out = np.empty((n_tokens, n_rows), np.float32)
                kernel = grid_kernel(name, args.planes)
                t_grid = best_time(lambda: kernel(q, q, q, offsets, qa.qx, qa.dx, qa.isum, n_tokens, n_rows, out.reshape(-1)))
                t_u8 = best_time(lambda: u8_kernel(*u8, offsets, qa.qx, qa.dx, qa.isum, n_tokens, n_rows,
                                                   out.reshape(-1)))
                weights = n_rows * n_cols
                print(f"| {name} | {n_rows} x {n_cols} | {n_tokens} | {q.nbytes / weights:.3f} | "
                      f"{sum(a.nbytes for a in u8) / weights:.3f} | {t_grid * 1e3:.3f} | {t_u8 * 1e3:.3f} | "
                      f"{t_u8 / t_grid:.2f} | {weights * n_tokens / t_grid / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
