"""The i-quant grid kernels (the file's bits, grids looked up in registers: runtime/kernels/
grids.py) against a byte-per-weight type (Q8_0, what the grid types were widened to before),
at Qwen2.5-Coder-1.5B's FFN shapes.

    python bench/bench_grids.py [--types IQ2_XXS,IQ3_XXS] [--baseline Q8_0]
                                [--shapes 8960x1536,1536x8960] [--tokens 1,512] [--threads 1]
                                [--planes 1] [--copies 1]

Weights: 64 rows encoded by lowbit's encoder from random normal values, repeated to the full
height. --copies N makes N copies of each matrix and runs them in turn, so that the weights
come from memory rather than the caches when N x the matrix exceeds the last-level cache, as
in a model's forward pass. Each figure is the best of several runs after a warm-up; the
activations are quantized once outside the timing. "B/w" is resident bytes per weight.
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
from lowbit.runtime.kernels.packed import QuantizedActivations  # noqa: E402


def best_time(fn, min_time=1.0, max_reps=400) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matrices(name, n_rows, n_cols, copies, rng):
    qtype = by_name(name)
    base = encode_rows(rng.standard_normal((64, n_cols)).astype(np.float32), qtype).reshape(64, -1)
    out = []
    for _ in range(copies):
        m = QuantMatrix(np.tile(base, (n_rows // 64, 1)).reshape(-1), qtype, n_rows, n_cols)
        m.packed()
        out.append(m)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--types", default="IQ2_XXS,IQ2_S,IQ3_XXS,IQ3_S,IQ1_S")
    p.add_argument("--baseline", default="Q8_0")
    p.add_argument("--shapes", default="8960x1536,1536x8960")
    p.add_argument("--tokens", default="1,512")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--planes", type=int, default=1)
    p.add_argument("--copies", type=int, default=1)
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(describe(args.threads))
    print(f"activation planes: {args.planes}; {args.copies} copies of each matrix\n")
    print(f"| type | rows x row length | T | B/w | ms | {args.baseline} ms | {args.baseline} / type | Gweights/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        n_rows, n_cols = map(int, shape.split("x"))
        base = matrices(args.baseline, n_rows, n_cols, args.copies, rng)
        for name in args.types.split(","):
            ms = matrices(name, n_rows, n_cols, args.copies, rng)
            for n_tokens in map(int, args.tokens.split(",")):
                qa = QuantizedActivations(rng.standard_normal((n_tokens, n_cols)).astype(np.float32), args.planes)
                out = np.empty((n_tokens, n_rows), np.float32)
                run = lambda group: [m.matmul_quantized(qa, out) for m in group]
                t = best_time(lambda: run(ms)) / args.copies
                t_base = best_time(lambda: run(base)) / args.copies
                weights = n_rows * n_cols
                print(f"| {name} | {n_rows} x {n_cols} | {n_tokens} | {ms[0].packed_bytes / weights:.3f} | "
                      f"{t * 1e3:.3f} | {t_base * 1e3:.3f} | {t_base / t:.2f} | {weights * n_tokens / t / 1e9:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
