"""Two threads against one on a machine where another process keeps a core busy.

    python bench/busy_threads.py MODEL [MODEL ...] [-p 512] [-n 128] [-r 3] [--rounds 2]

For each model and round, `lowbit bench MODEL -t 1,2` runs twice in a row: once as the machine
is, once while this script keeps one core busy with a single-threaded busy loop (a second
Python process spinning on `while True: pass`, started here and stopped when the run ends).
Both thread counts run inside each `lowbit bench` call, so every ratio -t 2 / -t 1 compares runs
made seconds apart under the same conditions. The load average before each run is printed: the
figures mean something only when nothing else runs (load below about 1 without the busy loop).

--env NAME=VALUE (repeatable) sets variables for the `lowbit bench` processes, e.g. to compare
threading layers (LOWBIT_THREADING=omp).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager


@contextmanager
def busy_core(enabled: bool):
    """A single-threaded busy loop in a child process while the block runs (if enabled)."""
    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)   # let it start spinning (and the scheduler see it)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def run_bench(model: str, args, env: dict) -> list[dict]:
    lowbit = [args.lowbit] if args.lowbit else [sys.executable, "-m", "lowbit.eval.cli"]
    cmd = [*lowbit, "bench", model, "-p", str(args.n_prompt), "-n", str(args.n_gen), "-t", "1,2",
           "-r", str(args.reps), "--no-startup", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("models", nargs="+")
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternations of quiet and busy runs (default 2)")
    p.add_argument("--lowbit", help="the lowbit command (default: this Python's -m lowbit.eval.cli)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = p.parse_args(argv)
    env = dict(os.environ)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            p.error(f"--env takes NAME=VALUE, not {item!r}")
        env[name] = value

    rows = {}   # (model, test, busy) -> {threads: [t/s, ...]}
    for r in range(args.rounds):
        for model in args.models:
            for busy in (False, True):
                load = os.getloadavg()[0]
                with busy_core(busy):
                    results = run_bench(model, args, env)
                layer = results[0].get("numba_threading_layer")
                for res in results:
                    key = (res["model_type"] + " " + res["file_type"], res["test"], busy)
                    rows.setdefault(key, {}).setdefault(res["n_threads"], []).append(res["avg_ts"])
                summary = ", ".join(f"{res['test']} t{res['n_threads']} {res['avg_ts']:.1f}" for res in results)
                print(f"round {r + 1} {model} {'busy loop' if busy else 'as is'} (load {load:.2f} before, "
                      f"{layer} layer): {summary}", flush=True)

    print("\n| model | test | -t 1 | -t 2 | -t 2 / -t 1 | -t 1, busy core | -t 2, busy core | -t 2 / -t 1, busy core |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, test) in dict.fromkeys((k[0], k[1]) for k in rows):
        cells = []
        for busy in (False, True):
            by_t = rows[(name, test, busy)]
            t1, t2 = statistics.median(by_t[1]), statistics.median(by_t[2])
            cells += [f"{t1:.1f}", f"{t2:.1f}", f"{t2 / t1:.2f}"]
        print(f"| {name} | {test} | " + " | ".join(cells) + " |")
    print(f"\nmedians over {args.rounds} rounds of {args.reps} runs each; load average now "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
