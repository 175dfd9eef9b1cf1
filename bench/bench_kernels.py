"""Per-type fused kernel throughput at the real models' shapes, against a numpy baseline.

    python bench/bench_kernels.py [--types Q4_K,IQ2_XXS] [--tokens 1,32,512] [--threads N] [--quick]
                                  [--planes P] [--generic]

For every type: matrix-vector (T = 1) and matrix-matrix (T = 32, 512) at rows x row length
576 x 1536 (SmolLM2 ffn_down) and 640 x 2048 (Gemma ffn_down), plus 1536 x 576 and 2048 x 640
for the 32-block types (K and i-quants need rows that are multiples of 256). Weights are random
rows encoded by libgguf. The baseline is what a user without lowbit would run: gguf-py's
dequantize followed by numpy's matmul, timed in the same run. Each figure is the median of
several runs after a warm-up (best of the runs: on this shared 2-core machine a run is now and
then delayed by a whole scheduler quantum, which says nothing about the kernel); the ratio is
baseline time / lowbit time, both measured the same way in the same run.

Quantized types run the integer kernels (runtime/kernels/packed.py) on weights repacked at
first use (excluded from the timing, like the JIT; "B/w" is the repacked bytes per weight);
the time includes quantizing the activations into P int8 planes (--planes, default the
runtime's ACTIVATION_PLANES), as a product in the model pays it. F32, F16 and BF16 run the float
kernels (runtime/kernels/floats.py) on the weights in place. --generic also times the float
decode-and-dot kernels of runtime/kernels/fused.py (the kernels every type ran before) in the
same run: "generic ms".
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from machine import describe, memory_bandwidth_gbs, pin_threads  # noqa: E402
from synthetic import encode_rows, reference_decode  # noqa: E402

from lowbit.quant.types import all_types, by_name  # noqa: E402
from lowbit.runtime.kernels import QuantMatrix  # noqa: E402
from lowbit.runtime.kernels.fused import matmul_kernel, matvec_kernel  # noqa: E402
from lowbit.runtime.kernels.packed import ACTIVATION_PLANES  # noqa: E402

SHAPES_ALL = [(576, 1536), (640, 2048)]
SHAPES_32 = [(1536, 576), (2048, 640)]


def timed(fn, min_time=0.3, max_reps=30) -> float:
    fn()  # warm-up (and JIT, excluded)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_type(qtype, shapes, token_counts, rng, planes, generic):
    rows = []
    for n_rows, n_cols in shapes:
        w = encode_rows(rng.standard_normal((n_rows, n_cols)).astype(np.float32) * 0.02, qtype)
        m = QuantMatrix(w.reshape(-1), qtype, n_rows, n_cols)
        bpw = (m.packed_bytes if m.integer and m.packed() is not None else m.n_bytes) / (n_rows * n_cols)
        for t in token_counts:
            xs = rng.standard_normal((t, n_cols)).astype(np.float32)
            if m.integer:
                ours = timed(lambda: m.matmul_quantized(m.quantize(xs, planes)))
            else:
                ours = timed((lambda: m.matvec(xs[0])) if t == 1 else (lambda: m.matmul(xs)))
            base = timed(lambda: xs @ reference_decode(w, qtype).T)
            gen = None
            if generic:
                out = np.empty((t, n_rows), np.float32)
                if t == 1:
                    gen = timed(lambda: matvec_kernel(qtype)(m.rows, xs[0], m._chunk, out[0]))
                else:
                    gen = timed(lambda: matmul_kernel(qtype)(m.rows, xs, m._chunk, out))
            rows.append({
                "type": qtype.name, "shape": f"{n_rows} x {n_cols}", "tokens": t,
                "weight_gbs": m.n_bytes / ours / 1e9,
                "gweights_s": n_rows * n_cols / ours / 1e9,
                "gflops": 2.0 * n_rows * n_cols * t / ours / 1e9,
                "ms": ours * 1e3, "baseline_ms": base * 1e3, "speedup": base / ours,
                "bytes_per_weight": bpw, "generic_ms": gen * 1e3 if gen is not None else None,
            })
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--types", help="comma-separated types (default: all registered)")
    p.add_argument("--tokens", default="1,32,512")
    p.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    p.add_argument("--quick", action="store_true", help="one shape per type, T = 1 and 32")
    p.add_argument("--planes", type=int, default=ACTIVATION_PLANES, help="int8 activation planes (1-3)")
    p.add_argument("--generic", action="store_true", help="also time the float decode-and-dot kernels")
    args = p.parse_args(argv)
    pool = pin_threads(args.threads, blas_threads=args.threads)   # the baseline's matmul on as many threads as the kernels
    types = [by_name(n) for n in args.types.split(",")] if args.types else all_types()
    token_counts = [int(t) for t in args.tokens.split(",")]
    if args.quick:
        token_counts = [1, 32]
    rng = np.random.default_rng(0)

    print(f"machine: {describe(args.threads)}; BLAS threads {pool.get() if pool else '?'}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"memory copy bandwidth (numpy, same run): {memory_bandwidth_gbs():.1f} GB/s")
    print(f"command: python bench/bench_kernels.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print()
    print(f"activation planes: {args.planes}")
    print()
    gen_head = " generic ms | vs generic |" if args.generic else ""
    print("| type | rows x row length | T | B/w | lowbit ms | weight GB/s | Gweights/s | GFLOP/s "
          f"| baseline ms | speedup |{gen_head}")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.generic else ""))
    results = []
    for qtype in types:
        shapes = SHAPES_ALL + (SHAPES_32 if qtype.block_size <= 32 else [])
        if args.quick:
            shapes = shapes[:1]
        for r in bench_type(qtype, shapes, token_counts, rng, args.planes, args.generic):
            results.append(r)
            gen = (f" {r['generic_ms']:.3f} | {r['generic_ms'] / r['ms']:.1f}x |"
                   if r["generic_ms"] is not None else "")
            print(f"| {r['type']} | {r['shape']} | {r['tokens']} | {r['bytes_per_weight']:.3f} | {r['ms']:.3f} "
                  f"| {r['weight_gbs']:.2f} | {r['gweights_s']:.2f} | {r['gflops']:.1f} | {r['baseline_ms']:.2f} "
                  f"| {r['speedup']:.1f}x |{gen}", flush=True)
    kinds = {t.name: t.family for t in all_types()}
    mv = [r for r in results if r["tokens"] == 1]
    kq = [r for r in mv if kinds[r["type"]] in ("k", "iq1", "iq2", "iq3", "iq4")]
    for label, sel in (("matvec, all types", mv), ("matvec, K and i-quants", kq)):
        if not sel:
            continue
        slow = min(sel, key=lambda r: r["gweights_s"])
        fast = max(sel, key=lambda r: r["gweights_s"])
        print(f"\n{label}: slowest {slow['type']} {slow['gweights_s']:.2f} Gweights/s ({slow['shape']}), "
              f"fastest {fast['type']} {fast['gweights_s']:.2f} Gweights/s ({fast['shape']}), ratio "
              f"{fast['gweights_s'] / slow['gweights_s']:.2f}; speedup over baseline "
              f"{min(r['speedup'] for r in sel):.1f}x .. {max(r['speedup'] for r in sel):.1f}x")
    return results


if __name__ == "__main__":
    main()
