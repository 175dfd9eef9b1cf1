"""lowbit against mainline llama.cpp in one sitting: `lowbit bench` and the native `llama-bench`
binary on the same files and thread counts, their runs interleaved, the ratios in one table.

    python bench/llamacpp_speed.py LLAMA_BENCH FILE [FILE ...] [-p 512] [-n 128] [-t 1,2]
                                   [-r 3] [--rounds 2] [--exact] [--json OUT]

LLAMA_BENCH is the path of a llama-bench binary (built from the llama.cpp source). Each round
runs, for each file and thread count, llama-bench (`-fa 1 -o json`) and then `lowbit bench
--json` (--no-startup) with the same -p, -n, -r; with several rounds the order of the two
alternates, so that a change in the machine's load falls on both. Reported per (file,
threads, test): the mean tokens/s of each program over the rounds, their ratio, and the load
average (1 min) seen before each run; the figures are as good as the machine is quiet.
lowbit runs its default (fast) activations unless --exact.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def run_llama_bench(binary: str, path: str, threads: int, args) -> dict[str, float]:
    cmd = [binary, "-m", path, "-p", str(args.n_prompt), "-n", str(args.n_gen), "-t", str(threads),
           "-fa", "1", "-r", str(args.reps), "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llama-bench failed on {path}: {done.stderr.strip().splitlines()[-1:]}")
    out = {}
    for r in json.loads(done.stdout):
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        out[test] = r["avg_ts"]
    return out


def run_lowbit(path: str, threads: int, args) -> dict[str, float]:
    cmd = [sys.executable, "-m", "lowbit.eval.cli", "bench", path, "-p", str(args.n_prompt), "-n",
           str(args.n_gen), "-t", str(threads), "-r", str(args.reps), "--no-startup", "--json"]
    if args.exact:
        cmd.append("--exact")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lowbit bench failed on {path}: {done.stderr.strip().splitlines()[-1:]}")
    return {r["test"]: r["avg_ts"] for r in json.loads(done.stdout)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("llama_bench", help="path of the llama-bench binary")
    ap.add_argument("files", nargs="+")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--exact", action="store_true", help="lowbit's exact activations")
    ap.add_argument("--json", metavar="OUT", help="also write every run as JSON")
    args = ap.parse_args(argv)
    if not Path(args.llama_bench).is_file():
        raise SystemExit(f"{args.llama_bench} is not a file: give the llama-bench binary's path")
    threads = [int(t) for t in args.threads.split(",")]
    speeds = defaultdict(lambda: defaultdict(list))    # (file, threads, test) -> program -> [t/s]
    loads = defaultdict(list)
    runs = []
    for rnd in range(args.rounds):
        for path in args.files:
            for t in threads:
                order = [("llama.cpp", run_llama_bench), ("lowbit", None)]
                if rnd % 2:
                    order.reverse()
                for prog, _ in order:
                    load = os.getloadavg()[0]
                    res = (run_llama_bench(args.llama_bench, path, t, args) if prog == "llama.cpp"
                           else run_lowbit(path, t, args))
                    for test, ts in res.items():
                        speeds[(path, t, test)][prog].append(ts)
                        loads[(path, t, test)].append(load)
                        runs.append({"round": rnd, "file": path, "threads": t, "test": test,
                                     "program": prog, "t_s": ts, "load_1min": load})
                    print(f"round {rnd + 1} {Path(path).name} t={t} {prog}: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in res.items()) + f" (load {load:.2f})",
                          file=sys.stderr, flush=True)
    mean = lambda v: sum(v) / len(v)
    print(f"lowbit ({'exact' if args.exact else 'fast'} activations) against {args.llama_bench} -fa 1, "
          f"{args.rounds} interleaved rounds of {args.reps} runs")
    print("| file | threads | test | llama.cpp t/s | lowbit t/s | lowbit / llama.cpp | load avg |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for (path, t, test), by in speeds.items():
        ll, lb = mean(by["llama.cpp"]), mean(by["lowbit"])
        print(f"| {Path(path).name} | {t} | {test} | {ll:.2f} | {lb:.2f} | {lb / ll:.2f} | "
              f"{min(loads[(path, t, test)]):.1f}-{max(loads[(path, t, test)]):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
