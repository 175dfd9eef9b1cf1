"""Where the time of one forward pass goes: per kernel call by tensor kind, attention, the
small ops (norms, RoPE, activation), the output matrix, and the Python left over.

    python bench/profile_forward.py MODEL [MODEL ...] [-t 2] [-p 512] [-n 32] [--reps 3]

For each model: a prompt of -p tokens (one forward call, the matrix-matrix kernels) and -n
generated tokens one at a time (the matrix-vector kernels), both from an empty cache and
fixed-seed random ids as `lowbit bench` runs them, after an untimed warm-up. --robust takes,
for every call, its median (--robust min: its minimum) over the repetitions, and the same of
the rest: on a machine where other processes now and then stall one thread of a parallel loop
for a scheduler time slice, that estimates what a quiet machine gives (the median when stalls
are rare; the minimum, optimistic, when every long call is hit). The timers wrap the
callables the forward pass looks up at run time (Linear.__call__, the kernels' wrappers that
runtime.model imported, Model.embed), so the profile needs no hooks in the
model; "python + glue" is the wall time of the forward call minus everything timed, i.e. the
interpreter, array reshapes and additions, the KV cache copies and the timers themselves
(about 0.2 us per timed call). Each row gives ms per token (generation) or ms per prompt, its
share, the calls per forward pass, and for matrix products the weights/s and weight bytes/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe, memory_bandwidth_gbs, pin_threads  # noqa: E402

from lowbit.eval.model_store import resolve_model  # noqa: E402
from lowbit.eval.speed import synthetic_tokens  # noqa: E402
from lowbit.runtime import model as model_mod  # noqa: E402
from lowbit.runtime.model import Linear, Model  # noqa: E402

OPS = ("rms_norm", "residual_norm", "qk_rope_store", "act_mul", "attention", "rope_tables", "quantize_for")


def kind_of(name: str) -> str:
    """'blk.3.ffn_down.weight' -> 'ffn_down'; the output matrix keeps its own row."""
    if name in ("output.weight", "token_embd.weight"):
        return "output"
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[0] == "blk" else name


class Profile:
    def __init__(self):
        self.types = defaultdict(set)
        self.seq = []
        self.active = False
        self.in_group = False

    def add(self, key, dt, weights=0, n_bytes=0, qtype=None):
        if self.active:
            self.seq.append((key, dt, weights, n_bytes))
            if qtype:
                self.types[key].add(qtype)

    def reset(self):
        self.seq = []


def instrument(prof: Profile):
    """Wrap the forward pass's callables with timers; returns a function that undoes it."""
    undo = []
    orig_call = Linear.__call__

    def timed_call(self, x, *args, **kwargs):
        if prof.in_group:
            return orig_call(self, x, *args, **kwargs)
        t = time.perf_counter()
        y = orig_call(self, x, *args, **kwargs)
        m = self.matrix
        prof.add(("matrix", kind_of(m.name)), time.perf_counter() - t, m.n_rows * m.n_cols,
                 m.n_bytes, m.qtype.name)
        return y

    Linear.__call__ = timed_call
    undo.append(lambda: setattr(Linear, "__call__", orig_call))

    if hasattr(model_mod, "LinearGroup"):
        Group = model_mod.LinearGroup
        orig_group = Group.__call__

        def timed_group(self, x, *args, **kwargs):
            t = time.perf_counter()
            prof.in_group = True
            try:
                y = orig_group(self, x, *args, **kwargs)
            finally:
                prof.in_group = False
            mats = [lin.matrix for lin in self.linears]
            kinds = "+".join(kind_of(m.name) for m in mats)
            prof.add(("matrix", kinds), time.perf_counter() - t, sum(m.n_rows * m.n_cols for m in mats),
                     sum(m.n_bytes for m in mats), ",".join(sorted({m.qtype.name for m in mats})))
            return y

        Group.__call__ = timed_group
        undo.append(lambda: setattr(Group, "__call__", orig_group))

    for name in OPS:
        if not hasattr(model_mod, name):
            continue
        fn = getattr(model_mod, name)

        def timed(*a, _fn=fn, _name=name, **k):
            if prof.in_group:    # inside a timed product (e.g. its activation quantization)
                return _fn(*a, **k)
            t = time.perf_counter()
            r = _fn(*a, **k)
            prof.add(("op", _name), time.perf_counter() - t)
            return r

        setattr(model_mod, name, timed)
        undo.append(lambda _n=name, _f=fn: setattr(model_mod, _n, _f))

    orig_embed = Model.embed

    def timed_embed(self, tokens):
        t = time.perf_counter()
        r = orig_embed(self, tokens)
        prof.add(("op", "embed"), time.perf_counter() - t)
        return r

    Model.embed = timed_embed
    undo.append(lambda: setattr(Model, "embed", orig_embed))

    def restore():
        for u in reversed(undo):
            u()
    return restore


def summarize(runs, types, per, robust):
    """runs: [(wall, [(key, dt, weights, bytes), ...]), ...] of identical call sequences.

    Default: the fastest run as it was. robust: every call's median over the runs, and the
    median of the untimed rest: an estimate that a call stalled now and then (a thread of a
    parallel loop descheduled by another process) does not move."""
    if not robust:
        wall, seq = min(runs, key=lambda r: r[0])
        rest = wall - sum(dt for _, dt, _, _ in seq)
    else:
        seqs = [seq for _, seq in runs]
        assert all(len(q) == len(seqs[0]) for q in seqs), "runs made different calls"
        pick = np.min if robust == "min" else np.median
        dts = pick(np.array([[dt for _, dt, _, _ in q] for q in seqs]), axis=0)
        seq = [(k, float(d), w, b) for (k, _, w, b), d in zip(seqs[0], dts)]
        rest = float(pick([wall - sum(dt for _, dt, _, _ in q) for wall, q in runs]))
        wall = sum(dts) + rest
    secs, calls, weights, nbytes = defaultdict(float), defaultdict(int), defaultdict(int), defaultdict(int)
    for key, dt, w, b in seq:
        secs[key] += dt
        calls[key] += 1
        weights[key] += w
        nbytes[key] += b
    return wall, secs, calls, weights, nbytes, {k: set(v) for k, v in types.items()}, per, rest


def profile_model(path, n_prompt, n_gen, reps, robust=False):
    model = Model.load(path)
    tokens = synthetic_tokens(model.gguf, model.cfg.n_vocab, max(n_prompt, n_gen, 1))
    cache = model.new_cache(max(n_prompt, n_gen) + 1)
    prof = Profile()
    restore = instrument(prof)
    results = {}
    try:
        # Warm-up (kernels loaded or compiled, weights repacked), untimed.
        cache.n_past = 0
        model.forward(tokens[:n_prompt], cache)
        cache.n_past = 0
        for tok in tokens[:2]:
            model.forward(tok[None], cache)
        # Prompt: one forward call from an empty cache.
        runs = []
        for _ in range(reps):
            prof.reset()
            prof.active = True
            cache.n_past = 0
            t = time.perf_counter()
            model.forward(tokens[:n_prompt], cache)
            runs.append((time.perf_counter() - t, prof.seq))
            prof.active = False
        results["pp"] = summarize(runs, prof.types, 1, robust)
        # Generation: n_gen tokens one at a time from an empty cache (as lowbit bench's tg).
        runs = []
        for _ in range(reps):
            cache.n_past = 0
            prof.reset()
            prof.active = True
            t = time.perf_counter()
            for tok in tokens[:n_gen]:
                model.forward(tok[None], cache)
            runs.append((time.perf_counter() - t, prof.seq))
            prof.active = False
        results["tg"] = summarize(runs, prof.types, n_gen, robust)
    finally:
        restore()
    return model, results


def table(label, res, n_tokens_label, n_prompt=0):
    wall, secs, calls, weights, nbytes, types, per, rest = res
    if n_tokens_label == "token":
        head = f"\n{label}: {wall / per * 1e3:.2f} ms per token ({per / wall:.1f} tokens/s)"
    else:
        head = f"\n{label}: {wall * 1e3:.1f} ms per prompt ({n_prompt / wall:.1f} tokens/s)"
    lines = [head]
    lines.append("| part | types | ms | share | calls | Gweights/s | weight GB/s |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    rows = sorted(secs.items(), key=lambda kv: -kv[1])
    timed = 0.0
    for key, s in rows:
        timed += s
        kind, name = key
        g = f"{weights[key] / s / 1e9:.2f}" if weights.get(key) else ""
        b = f"{nbytes[key] / s / 1e9:.2f}" if nbytes.get(key) else ""
        lines.append(f"| {name if kind == 'op' else name + ' (matrix)'} | {','.join(sorted(types.get(key, ())))} "
                     f"| {s / per * 1e3:.3f} | {100 * s / wall:.1f}% | {calls[key] // per} | {g} | {b} |")
    lines.append(f"| python + glue | | {rest / per * 1e3:.3f} | {100 * rest / wall:.1f}% | | | |")
    mats = sum(s for (k, _), s in secs.items() if k == "matrix")
    lines.append(f"| **all matrix products** | | {mats / per * 1e3:.3f} | {100 * mats / wall:.1f}% | | "
                 f"{sum(weights.values()) / mats / 1e9:.2f} | {sum(nbytes.values()) / mats / 1e9:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("-t", "--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    p.add_argument("-p", "--prompt", type=int, default=512)
    p.add_argument("-n", "--gen", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions; the fastest is shown")
    p.add_argument("--robust", nargs="?", const="median", choices=["median", "min"],
                   help="per call, the median (or the minimum) over the repetitions: an estimate for "
                        "a quiet machine when other processes stall the threads of parallel loops")
    args = p.parse_args(argv)
    pool = pin_threads(args.threads)
    print(f"machine: {describe(args.threads)}; BLAS threads {pool.get() if pool else '?'}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"memory copy bandwidth (numpy, read + write): {memory_bandwidth_gbs():.1f} GB/s")
    print(f"command: python bench/profile_forward.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    for m in args.models:
        path = resolve_model(m)
        model, res = profile_model(path, args.prompt, args.gen, args.reps, args.robust)
        name = Path(path).name
        how = f" ({args.robust} of every call over the runs)" if args.robust else ""
        print(table(f"{name}, prompt of {args.prompt} tokens{how}", res["pp"], "prompt", args.prompt))
        print(table(f"{name}, generation of {args.gen} tokens from an empty cache{how}", res["tg"], "token"))
        del model
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
