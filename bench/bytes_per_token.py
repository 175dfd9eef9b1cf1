"""What limits generation: the weight bytes each token reads against the machine's read bandwidth.

    python bench/bytes_per_token.py MODEL [MODEL ...] [-n 64] [-t 1,2]

Generating a token reads every matrix once (the output matrix included; the embedding only a
row), so bytes per token = the resident bytes of the matrices in their kernel layout. For each
model and thread count this measures tokens/s over n generated tokens (fast activations, as
`lowbit bench` runs them) and prints the bytes read per second it amounts to, beside the read
bandwidth of this machine at the same thread count (a parallel sum over a 1 GiB array, best of
5). A type far below the bandwidth is limited by its decoding work, not by memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


@njit(parallel=True, fastmath=True, cache=True)
def _sum(a):
    s = np.float32(0.0)
    for i in prange(a.shape[0]):
        s += a[i]
    return s


def read_bandwidth_gbs(threads: int, n_bytes: int = 1 << 30, reps: int = 5) -> float:
    numba.set_num_threads(threads)
    a = np.ones(n_bytes // 4, np.float32)
    _sum(a[:1024])
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        _sum(a)
        best = min(best, time.perf_counter() - t)
    return n_bytes / best / 1e9


def weight_bytes_per_token(model) -> int:
    return sum(lin.matrix.packed_bytes if lin.matrix.integer else lin.matrix.n_bytes
               for lin in model.linears(include_output=True))


def main() -> None:
    from lowbit.eval.loading import load_model
    from lowbit.eval.speed import time_generation

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("-n", type=int, default=64, help="tokens generated per measurement")
    ap.add_argument("-t", "--threads", default="1,2")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(describe(max(threads)) + f", load average {os.getloadavg()[0]:.2f}")
    bandwidth = {t: read_bandwidth_gbs(t) for t in threads}
    print("read bandwidth: " + ", ".join(f"{bandwidth[t]:.1f} GB/s at {t} thread(s)" for t in threads))
    print("\n| file | bytes per token | " + " | ".join(f"t{t} tokens/s | t{t} GB/s (of {bandwidth[t]:.1f})"
                                                     for t in threads) + " |")
    print("|---|---:|" + "---:|---:|" * len(threads))
    for name in args.models:
        model, _ = load_model(name, precision="fast")
        model.prepare()
        per_token = weight_bytes_per_token(model)
        cells = []
        for t in threads:
            numba.set_num_threads(t)
            cache = model.new_cache(args.n + 1)
            time_generation(model, cache, np.zeros(4, np.int64))       # settle
            rate = args.n / time_generation(model, cache, np.zeros(args.n, np.int64))
            cells += [f"{rate:.2f}", f"{rate * per_token / 1e9:.1f}"]
        print(f"| {os.path.basename(str(model.gguf.path))} | {per_token / 2**20:.0f} MiB | "
              + " | ".join(cells) + " |", flush=True)
        del model


if __name__ == "__main__":
    main()
