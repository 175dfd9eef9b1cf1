"""Time from a process's start to a model ready to generate: lowbit against llama.cpp.

    python bench/load_time.py LLAMA_BIN MODEL TEXT [-t 2] [--rounds 3]

LLAMA_BIN is the directory of a llama.cpp build (llama-perplexity is used), TEXT any text file
of a few thousand tokens (llama-perplexity needs one to start). Per round, interleaved:

- lowbit: `lowbit generate MODEL -p "def fib(n):" -n 1 --temp 0 -t T`, ready when it prints its
  `[load: ...]` line (file parsed, tokenizer built, weights in their kernel layout, kernels
  loaded, warm-up run); the line's own figure excludes the interpreter's start and imports.
- llama.cpp: `llama-perplexity -m MODEL -f TEXT -c 512 --chunks 1 -t T`, ready when it prints
  its system_info line (model loaded, context made, warm-up run); stopped there.

Before each run the file's pages are asked out of the page cache (posix_fadvise DONTNEED: no
root needed, unlike /proc/sys/vm/drop_caches), so both programs read the file cold or both warm.
Wall seconds are counted from the launch to the ready line.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_until(cmd: list[str], ready: re.Pattern) -> tuple[float, str]:
    """Seconds from launching cmd to the first output line (stdout or stderr) matching `ready`,
    and that line; the process is stopped there."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if ready.search(line):
                return time.perf_counter() - start, line.strip()
        raise SystemExit(f"{cmd[0]} ended without a line matching {ready.pattern!r} "
                         f"(exit {proc.wait()})")
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("llama_bin", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    perplexity = args.llama_bin / "llama-perplexity"
    for path in (perplexity, args.model, args.text):
        if not path.exists():
            raise SystemExit(f"{path} does not exist")
    lowbit = [sys.executable, "-m", "lowbit.eval.cli", "generate", str(args.model),
              "-p", "def fib(n):", "-n", "1", "--temp", "0", "-t", str(args.threads)]
    llama = [str(perplexity), "-m", str(args.model), "-f", str(args.text), "-c", "512",
             "--chunks", "1", "-t", str(args.threads)]
    walls = {"lowbit": [], "llama.cpp": []}
    reported = []
    for r in range(args.rounds):
        evict(args.model)
        wall, line = time_until(lowbit, re.compile(r"^\[load: "))
        walls["lowbit"].append(wall)
        reported.append(float(re.search(r"\[load: ([0-9.]+) s", line).group(1)))
        evict(args.model)
        walls["llama.cpp"].append(time_until(llama, re.compile(r"system_info"))[0])
        print(f"round {r + 1}: lowbit {walls['lowbit'][-1]:.2f} s (its [load] line: {reported[-1]:.1f} s), "
              f"llama.cpp {walls['llama.cpp'][-1]:.2f} s, load average {os.getloadavg()[0]:.2f}", flush=True)
    lo, ll = statistics.median(walls["lowbit"]), statistics.median(walls["llama.cpp"])
    print(f"median from launch to ready: lowbit {lo:.2f} s, llama.cpp {ll:.2f} s, ratio {lo / ll:.2f}; "
          f"lowbit's [load] line {statistics.median(reported):.1f} s (without interpreter start and imports)")


if __name__ == "__main__":
    main()
