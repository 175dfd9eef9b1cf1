"""`lowbit bench`: prompt processing and generation speed, memory and start-up time, as llama-bench.

Tests, as llama-bench runs them:
  ppP  P tokens (the first one BOS when the model adds BOS, the rest fixed-seed random ids) in
       one Model.forward call from an empty KV cache: the matrix-matrix kernels.
  tgN  N tokens one Model.forward call at a time from an empty KV cache (each step computes the
       logits, nothing is sampled; the ids are fixed-seed random): the matrix-vector kernels.
Each test runs once untimed (warm-up, which also brings in the JIT-compiled kernels) and then
`reps` times; t/s is the mean and sample standard deviation of the per-repetition tokens/s.

Memory: resident set after the imports, before any model is loaded (the interpreter, numpy,
numba, llvmlite), and the peak resident set while one model is loaded and benchmarked (the peak
is reset before each model through /proc/self/clear_refs; where that is not allowed it is the
process's peak so far, ru_maxrss). The GGUF file is memory-mapped, so the weights count in the
resident set once their pages have been read.

Threads: -t sets numba's pool, which runs every matrix product; it is an upper bound, since each
forward pass leaves out the cores other processes keep busy (runtime/threads.py), and the table
says when that happened ("2 (1)": asked for 2, ran on 1). numpy's matmul, which
the attention uses (runtime/ops.py), runs on OpenBLAS's own pool, sized to all cores by default
whatever -t says. The two pools take turns (the forward pass is sequential), yet a second BLAS
thread cost 2-3x on this 2-core machine while it was shared with other jobs (2026-11-25, SmolLM2,
256-token prompt, interleaved runs): 284 tokens/s with numba 1 + BLAS 1 thread against 85 with
numba 1 + BLAS 2, and 120 against 54 with numba 2; most likely OpenBLAS's idle workers spinning
after each call on the cores numba's threads need next. The attention is a few percent of a prompt's arithmetic, so the bench runs BLAS on one
thread (blas_threads; `lowbit bench --blas-threads`), set through OpenBLAS's C entry point
(lowbit.eval.machine.blas_pool) since OPENBLAS_NUM_THREADS is read only when numpy is imported,
which has happened before -t is parsed; the start-up child gets OPENBLAS_NUM_THREADS instead.

Start-up: a separate process loads the model and runs an 8-token prompt and one generated token,
the way `lowbit generate` starts: the time from the start of the load to the first token is
what a user waits, JIT compilation or cache loading included. It runs with the numba cache as
it is (the report says whether it was warm, counting the kernels the run had to compile and
write), and with cold=True also with LOWBIT_CACHE_DIR pointing at a fresh, empty directory.
"""
from __future__ import annotations

import datetime as _dt
from contextlib import contextmanager
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SEED = 1234
STARTUP_PROMPT = 8          # tokens in the start-up measurement's prompt


class BenchError(ValueError):
    """Bad benchmark parameters: one sentence for the user."""


def parse_counts(text: str, flag: str, minimum: int | None = None) -> list[int]:
    """'512' or '128,256' -> [512] or [128, 256] (repeats dropped), each at least `minimum`."""
    values = []
    for part in str(text).split(","):
        try:
            v = int(part.strip())
        except ValueError:
            raise BenchError(f"{flag} takes whole numbers separated by commas, not {text!r}") from None
        if minimum is not None and v < minimum:
            raise BenchError(f"{flag} must be at least {minimum}, not {v}")
        values.append(v)
    return list(dict.fromkeys(values))


def parse_count(text: str, flag: str, minimum: int) -> int:
    values = parse_counts(text, flag, minimum)
    if len(values) != 1 or "," in str(text):
        raise BenchError(f"{flag} takes one whole number, not {text!r}")
    return values[0]


# -- memory ----------------------------------------------------------------------------------

def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """The current resident set (VmRSS), or the peak where /proc is missing."""
    return _status_bytes("VmRSS") or peak_rss_bytes()


def peak_rss_bytes() -> int:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Start a new peak (Linux >= 4.0: writing 5 to clear_refs resets VmHWM); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- describing a model ----------------------------------------------------------------------

@dataclass
class ModelInfo:
    path: Path
    name: str            # general.name, else the file name without .gguf
    arch: str
    label: str           # as llama-bench's model column: architecture and size ("llama 135M")
    file_type: str       # the llama.cpp preset (Q4_K_M ...), else the dominant matrix type
    file_bytes: int
    n_params: int


def file_type_name(gguf) -> str:
    from gguf import LlamaFileType
    ftype = gguf.metadata.get("general.file_type")
    if ftype is not None:
        try:
            return LlamaFileType(int(ftype) & ~int(LlamaFileType.GUESSED)).name.removeprefix(
                "MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    by_type: dict[str, int] = {}
    for t in gguf.tensors.values():
        if len(t.shape) == 2:
            by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + t.n_bytes
    return max(by_type, key=by_type.get) if by_type else "?"


def model_info(gguf) -> ModelInfo:
    n_params = sum(t.n_elements for t in gguf.tensors.values())
    size = gguf.metadata.get("general.size_label") or (
        f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{max(1, round(n_params / 1e6))}M")
    return ModelInfo(path=gguf.path, name=str(gguf.metadata.get("general.name") or gguf.path.stem),
                     arch=gguf.architecture, label=f"{gguf.architecture} {size}",
                     file_type=file_type_name(gguf), file_bytes=gguf.path.stat().st_size, n_params=n_params)


def synthetic_tokens(gguf, n_vocab: int, n: int, seed: int = SEED) -> np.ndarray:
    """n fixed-seed random token ids, the first one BOS if the model adds BOS (as llama-bench)."""
    ids = np.random.default_rng(seed).integers(0, n_vocab, size=n, dtype=np.int64)
    bos = gguf.metadata.get("tokenizer.ggml.bos_token_id")
    if n and bos is not None and gguf.metadata.get("tokenizer.ggml.add_bos_token") and 0 <= int(bos) < n_vocab:
        ids[0] = int(bos)
    return ids


# -- timing ----------------------------------------------------------------------------------

def time_prompt(model, cache, tokens: np.ndarray) -> float:
    cache.n_past = 0
    t = time.perf_counter()
    model.forward(tokens, cache)
    return time.perf_counter() - t


def time_generation(model, cache, tokens: np.ndarray) -> float:
    cache.n_past = 0
    t = time.perf_counter()
    for token in tokens:
        model.forward(token[None], cache)
    return time.perf_counter() - t


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


@dataclass
class Test:
    kind: str       # "pp" or "tg"
    n: int

    @property
    def name(self) -> str:
        return f"{self.kind}{self.n}"


def tests_for(prompts: list[int], gens: list[int]) -> list[Test]:
    return [Test("pp", p) for p in prompts if p > 0] + [Test("tg", n) for n in gens if n > 0]


def run_test(model, cache, tokens: np.ndarray, test: Test, reps: int, step: Callable[[], None]) -> list[float]:
    """Seconds of each timed repetition, after one untimed warm-up run."""
    timer = time_prompt if test.kind == "pp" else time_generation
    timer(model, cache, tokens[:test.n])
    step()
    seconds = []
    for _ in range(reps):
        seconds.append(timer(model, cache, tokens[:test.n]))
        step()
    return seconds


def threads_used(before: dict, after: dict, asked: int) -> dict[str, int]:
    """Forward passes by the number of threads they ran on (runtime/threads.py lowers it when
    other processes keep cores busy), between two snapshots of the counts."""
    used = {}
    for (a, u), n in after.items():
        if a == asked and n > before.get((a, u), 0):
            used[str(u)] = n - before.get((a, u), 0)
    return used or {str(asked): 0}


# -- start-up (a child process) ----------------------------------------------------------------

def _kernel_files(root: Path) -> dict[str, float]:
    """Numba's compiled-code files (*.nbc) under root, with their modification times."""
    if not root.is_dir():
        return {}
    out = {}
    for p in root.rglob("*.nbc"):
        try:
            out[str(p)] = p.stat().st_mtime_ns
        except OSError:
            pass
    return out


def startup(path: Path, threads: int, fresh_cache: bool, blas_threads: int = 1) -> dict:
    """Load `path` and produce the first tokens in a new process; the figures it reports.

    With fresh_cache the child's LOWBIT_CACHE_DIR is a new empty directory, so every kernel is
    compiled; otherwise the child uses this process's cache directory as it is.
    """
    from lowbit.quant.jit_cache import cache_dir

    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(blas_threads))  # read when the child imports numpy
    cmd = [sys.executable, "-m", "lowbit.eval.speed", "--startup", str(Path(path).resolve()),
           "--threads", str(threads)]
    with tempfile.TemporaryDirectory(prefix="lowbit-cold-") as tmp:
        root = Path(tmp) / "numba" if fresh_cache else cache_dir() / "numba"
        if fresh_cache:
            env["LOWBIT_CACHE_DIR"] = tmp
        before = _kernel_files(root)
        t = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        after = _kernel_files(root)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise BenchError(f"the start-up run of {Path(path).name} failed: {lines[-1] if lines else 'no message'}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    compiled = sum(1 for p, m in after.items() if before.get(p) != m)
    if fresh_cache:
        state = "empty (a fresh LOWBIT_CACHE_DIR)"
    elif compiled == 0:
        state = "warm"
    else:
        state = "cold" if not before else "partly warm"
    res.update(cache=state, kernels_compiled=compiled, process_seconds=wall, threads=threads)
    return res


def _startup_child(path: str, threads: int) -> dict:
    t0 = time.perf_counter()
    import numba

    from lowbit.runtime.model import Model
    numba.set_num_threads(threads)
    t1 = time.perf_counter()
    model = Model.load(path)
    t2 = time.perf_counter()
    prompt = synthetic_tokens(model.gguf, model.cfg.n_vocab, STARTUP_PROMPT)
    cache = model.new_cache(STARTUP_PROMPT + 1)
    token = int(np.argmax(model.forward(prompt, cache)[-1]))
    t3 = time.perf_counter()
    model.forward([token], cache)
    t4 = time.perf_counter()
    again_prompt = time_prompt(model, cache, prompt)
    again_decode = time_generation(model, cache, np.array([token]))
    return {"import_seconds": t1 - t0, "load_seconds": t2 - t1, "prompt_seconds": t3 - t2,
            "decode_seconds": t4 - t3, "first_token_seconds": t3 - t1, "first_decode_seconds": t4 - t1,
            "warm_prompt_seconds": again_prompt, "warm_decode_seconds": again_decode,
            "prompt_tokens": STARTUP_PROMPT}


# -- the whole benchmark ---------------------------------------------------------------------

def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import llvmlite
    import numba
    try:
        lowbit = version("lowbit")
    except PackageNotFoundError:
        lowbit = "unknown"
    return {"lowbit": lowbit, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "llvmlite": llvmlite.__version__}


@contextmanager
def blas_threads_set(n: int):
    """numpy's BLAS pool at n threads inside the block, as it was afterwards; yields the pool."""
    from .machine import blas_pool
    pool = blas_pool()
    before = pool.get() if pool is not None else None
    if pool is not None:
        pool.set(n)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.set(before)


def bench(paths: list[Path], threads: list[int], prompts: list[int], gens: list[int], reps: int,
          cold: bool = False, startup_runs: bool = True, blas_threads: int = 1,
          progress: Callable[[str, int], None] | None = None, precision: str = "fast") -> list[dict]:
    """Benchmark each model at each thread count (numba's threads; the caller has checked the
    counts); one result dict per (model, threads, test). numpy's BLAS pool (the attention's
    matmuls) runs at blas_threads meanwhile (see the module docstring for why 1 is the default).
    "rss_after_imports" is the resident set when the call begins: in `lowbit bench`, after the
    imports and before any model is loaded. precision: the activation precision of the integer
    products ("fast" or "exact", runtime/model.py).
    """
    import gc

    import numba

    from lowbit.runtime.model import Model
    from lowbit.runtime.threads import SHARE

    from .machine import cpu_name

    progress = progress or (lambda stage, n: None)
    with blas_threads_set(blas_threads) as pool:
        tests = tests_for(prompts, gens)
        rss_imports = rss_bytes()
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        common = {"cpu_info": cpu_name(), "n_cores": os.cpu_count(),
                  **{f"{k}_version": v for k, v in versions().items()}, "blas": pool.name if pool else None,
                  "load_average": list(load) if load else None}
        results = []
        for path in paths:
            starts = []
            if startup_runs:
                progress(f"{Path(path).name}: start-up", 0)
                starts.append(startup(path, threads[0], fresh_cache=False, blas_threads=blas_threads))
                if cold:
                    progress(f"{Path(path).name}: cold start-up", 0)
                    starts.append(startup(path, threads[0], fresh_cache=True, blas_threads=blas_threads))
            gc.collect()
            peak_reset = reset_peak_rss()
            model = Model.load(path)
            model.precision = precision
            info = model_info(model.gguf)
            longest = max([t.n for t in tests], default=1)
            tokens = synthetic_tokens(model.gguf, model.cfg.n_vocab, longest)
            cache = model.new_cache(longest)
            rows = []
            for n_threads in threads:
                numba.set_num_threads(n_threads)
                for test in tests:
                    progress(f"{info.label} t={n_threads} {test.name}", 0)
                    counts = dict(SHARE.counts)
                    seconds = run_test(model, cache, tokens, test, reps, lambda: progress("", 1))
                    used = threads_used(counts, SHARE.counts, n_threads)
                    tps = [test.n / s for s in seconds]
                    avg_ts, std_ts = mean_std(tps)
                    avg_s, std_s = mean_std(seconds)
                    rows.append({
                        **common, "numba_threading_layer": _threading_layer(numba),
                        "n_blas_threads": pool.get() if pool else None,
                        "model_filename": str(info.path), "model_name": info.name, "model_arch": info.arch,
                        "model_type": info.label,
                        "file_type": info.file_type, "model_size": info.file_bytes, "model_n_params": info.n_params,
                        "n_threads": numba.get_num_threads(), "threads_used": used, "test": test.name,
                        "n_prompt": test.n if test.kind == "pp" else 0, "n_gen": test.n if test.kind == "tg" else 0,
                        "reps": reps, "precision": precision, "test_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "avg_ns": round(avg_s * 1e9), "stddev_ns": round(std_s * 1e9),
                        "avg_ts": avg_ts, "stddev_ts": std_ts,
                        "samples_ns": [round(s * 1e9) for s in seconds], "samples_ts": tps,
                    })
            memory = {"rss_after_imports": rss_imports, "peak_rss": peak_rss_bytes(),
                      "peak_is_per_model": peak_reset}
            memory["peak_above_imports"] = memory["peak_rss"] - rss_imports
            for r in rows:
                r["memory"] = memory
                r["startup"] = starts
            results += rows
            del model, cache
            gc.collect()
        return results


def _threading_layer(numba) -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        return None


# -- output --------------------------------------------------------------------------------

def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _threads_cell(r: dict) -> str:
    """'2', or '2 (1)' when other processes' load made the passes run on 1 thread (all of them),
    '2 (1: 40%)' for part of them."""
    used = {int(k): n for k, n in r.get("threads_used", {}).items() if n}
    asked = r["n_threads"]
    if not used or set(used) == {asked}:
        return str(asked)
    total = sum(used.values())
    fewer = sorted(u for u in used if u != asked)
    if asked not in used and len(fewer) == 1:
        return f"{asked} ({fewer[0]})"
    return f"{asked} (" + ", ".join(f"{u}: {used[u] / total:.0%}" for u in fewer) + ")"


def format_table(results: list[dict]) -> str:
    """The llama-bench markdown table, then memory, start-up and machine lines."""
    head = ["model", "size", "params", "type", "threads", "test", "t/s"]
    right = {"size", "params", "threads", "test", "t/s"}
    body = [[r["model_type"], _size(r["model_size"]), _count(r["model_n_params"]), r["file_type"],
             _threads_cell(r), r["test"], f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if h in right else c.ljust(w)
                                 for c, w, h in zip(cells, widths, head)) + " |"

    out = [line(head), "| " + " | ".join("-" * (w - 1) + ":" if h in right else "-" * w
                                         for w, h in zip(widths, head)) + " |"]
    out += [line(row) for row in body]
    out.append("")
    seen = set()
    for r in results:
        if r["model_filename"] in seen:
            continue
        seen.add(r["model_filename"])
        m = r["memory"]
        peak = "peak RSS" if m["peak_is_per_model"] else "process peak RSS so far"
        out.append(f"memory {r['model_type']} {r['file_type']}: {peak} {m['peak_rss'] / 2**20:.1f} MiB, "
                   f"{m['peak_above_imports'] / 2**20:.1f} MiB above the {m['rss_after_imports'] / 2**20:.1f} MiB "
                   f"resident after imports = {m['peak_above_imports'] / r['model_size']:.2f}x the file "
                   f"({r['model_size'] / 2**20:.1f} MiB)")
        for s in r["startup"]:
            out.append(f"start-up {r['model_type']} {r['file_type']} (numba cache {s['cache']}, {s['kernels_compiled']} kernels "
                       f"compiled, {s['threads']} threads): first token {s['first_token_seconds']:.2f} s after "
                       f"the load began (load {s['load_seconds']:.2f} s + {s['prompt_tokens']}-token prompt "
                       f"{s['prompt_seconds']:.2f} s, {s['warm_prompt_seconds']:.2f} s when repeated), first "
                       f"generated token +{s['decode_seconds']:.2f} s ({s['warm_decode_seconds']:.3f} s when "
                       f"repeated); process {s['process_seconds']:.2f} s incl. {s['import_seconds']:.2f} s of imports")
    if results:
        r = results[0]
        threads = ",".join(dict.fromkeys(str(x["n_threads"]) for x in results))
        blas_threads = ",".join(dict.fromkeys(str(x["n_blas_threads"]) for x in results))
        blas = (f"numpy's BLAS ({r['blas']}) {blas_threads} threads" if r["blas"]
                else "numpy's BLAS threads not controlled (no OpenBLAS found)")
        load = r.get("load_average")
        load = f"; load average {load[0]:.2f} before the runs" if load else ""
        if any(_threads_cell(x) != str(x["n_threads"]) for x in results):
            out.append("threads (N): the forward passes ran on N threads because other processes kept "
                       "cores busy (runtime/threads.py)")
        out.append(f"machine: {r['cpu_info']}, {r['n_cores']} cores{load}; numba {threads} threads "
                   f"({r['numba_threading_layer']} layer), {blas}; lowbit {r['lowbit_version']}, "
                   f"Python {r['python_version']}, numpy {r['numpy_version']}, numba {r['numba_version']}, "
                   f"llvmlite {r['llvmlite_version']}; activations: {r.get('precision', 'exact')} "
                   f"({'one int8 plane' if r.get('precision') == 'fast' else 'three int8 planes'} per block of 32); "
                   f"mean ± sample std of {r['reps']} run{'s' if r['reps'] > 1 else ''} after a warm-up")
    return "\n".join(out)


def _main(argv: list[str]) -> int:
    """The start-up child: `python -m lowbit.eval.speed --startup PATH --threads N` prints JSON."""
    import argparse
    p = argparse.ArgumentParser(prog="lowbit.eval.speed")
    p.add_argument("--startup", required=True)
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args(argv)
    print(json.dumps(_startup_child(args.startup, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
