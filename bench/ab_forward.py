"""A/B timing of forward-pass variants in one process, interleaved, for a shared machine.

    python bench/ab_forward.py MODEL [-t 1] [-n 16] [-p 0] [--rounds 5] --variant NAME ...

Each round runs every variant once (tg: n generated tokens after a 64-token prompt; pp: one
p-token prompt), in turn, so that a burst of load hits all of them alike; the figure per
variant is its best round. A variant is a named switch defined in VARIANTS below: a function
that takes the model and a flag and turns the variant on (True) or off (False).
"""
from __future__ import annotations

import argparse
import os
import time


from lowbit.eval.machine import pin_threads
from lowbit.eval.model_store import resolve_model
from lowbit.eval.speed import synthetic_tokens
from lowbit.runtime.kernels import packed
from lowbit.runtime.model import Model


def _stacking(model, on):
    for L in model.layers:
        for g in (L.qkv, L.gate_up):
            if not hasattr(g, "_saved"):
                g._saved = g.stacked
            g.stacked = g._saved if on else None


DEFAULT_PLANES = packed.ACTIVATION_PLANES   # what "off" restores


def _planes(n):
    def set_planes(model, on):
        for lin in model.linears(include_output=True):
            lin.planes = n if on else DEFAULT_PLANES
    return set_planes


VARIANTS = {
    "baseline": lambda model, on: None,
    "unstacked": lambda model, on: _stacking(model, not on),
    "planes1": _planes(1),
    "planes2": _planes(2),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("-t", "--threads", type=int, default=1)
    p.add_argument("-n", "--gen", type=int, default=16)
    p.add_argument("-p", "--prompt", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variant", action="append", default=[])
    args = p.parse_args(argv)
    pin_threads(args.threads)
    model = Model.load(resolve_model(args.model))
    variants = ["baseline"] + [v for v in args.variant if v != "baseline"]
    tokens = synthetic_tokens(model.gguf, model.cfg.n_vocab, max(args.prompt, 64) + args.gen)
    cache = model.new_cache(max(args.prompt, 64) + args.gen + 1)
    best = {v: [float("inf"), float("inf")] for v in variants}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} threads")
    for r in range(args.rounds + 1):
        for v in variants:
            VARIANTS[v](model, True)
            if args.prompt:
                cache.n_past = 0
                t = time.perf_counter()
                model.forward(tokens[:args.prompt], cache)
                if r:
                    best[v][0] = min(best[v][0], time.perf_counter() - t)
            cache.n_past = 0
            model.forward(tokens[:64], cache)
            t = time.perf_counter()
            for tok in tokens[64:64 + args.gen]:
                model.forward(tok[None], cache)
            if r:
                best[v][1] = min(best[v][1], (time.perf_counter() - t) / args.gen)
            VARIANTS[v](model, False)
    for v in variants:
        pp = f"pp{args.prompt} {args.prompt / best[v][0]:.1f} t/s, " if args.prompt else ""
        print(f"{v:12s} {pp}tg {1 / best[v][1]:.1f} t/s ({best[v][1] * 1e3:.2f} ms/token)")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
