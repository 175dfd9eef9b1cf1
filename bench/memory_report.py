"""Where a loaded model's resident memory goes: the repacked weights, the KV cache, the
rest (compiled kernels, GGUF metadata, buffers), against the file size.

    python bench/memory_report.py MODEL [MODEL ...] [-c 640]

Each model in a fresh process (so that one model's pages do not count for the next); figures
from /proc/self/status (RssAnon, RssFile) after the imports, after Model.load, after a first
generated token (every kernel loaded, every matrix repacked, the file pages released), after
a 512-token prompt and 128 generated tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1]) * 1024
    return out


def child(path: str, n_ctx: int) -> dict:
    import numpy as np
    from lowbit.eval.model_store import resolve_model
    from lowbit.runtime.model import Model
    steps = {"imports": status()}
    path = resolve_model(path)
    model = Model.load(path)
    steps["load"] = status()
    cache = model.new_cache(n_ctx)
    model.forward(np.array([1]), cache)
    steps["first token"] = status()
    cache.n_past = 0
    tokens = np.arange(min(512, n_ctx - 128)) % model.cfg.n_vocab
    model.forward(tokens, cache)
    for t in range(128):
        model.forward(np.array([t]), cache)
    steps["pp512 + tg128"] = status()
    packed = sum(lin.matrix.packed_bytes for lin in model.linears(include_output=True))
    if model._embd is not model.output.matrix:
        packed += model._embd.packed_bytes
    return {"file": os.path.getsize(path), "packed": packed, "kv": cache.kt.nbytes + cache.v.nbytes,
            "steps": steps}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*")
    p.add_argument("-c", "--ctx", type=int, default=640)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.ctx)))
        return
    mib = lambda b: f"{b / 2**20:.1f}"
    for m in args.models:
        r = json.loads(subprocess.run([sys.executable, __file__, "--child", m, "-c", str(args.ctx)],
                                      capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        base = r["steps"]["imports"]["VmRSS"]
        print(f"\n{m}: file {mib(r['file'])} MiB, repacked weights {mib(r['packed'])} MiB "
              f"({r['packed'] / r['file']:.2f}x the file), KV cache for {args.ctx} positions {mib(r['kv'])} MiB")
        print("| after | RSS MiB | above imports | anonymous | file-backed | peak |")
        print("|---|---:|---:|---:|---:|---:|")
        for k, s in r["steps"].items():
            print(f"| {k} | {mib(s['VmRSS'])} | {mib(s['VmRSS'] - base)} | {mib(s['RssAnon'])} | "
                  f"{mib(s['RssFile'])} | {mib(s['VmHWM'])} |")


if __name__ == "__main__":
    main()
