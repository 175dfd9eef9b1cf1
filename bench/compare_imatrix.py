"""Compare two importance matrices of one model (e.g. lowbit's and llama-imatrix's from the same
text): per tensor kind, how well the per-column importances agree.

    python bench/compare_imatrix.py A.imatrix.gguf B.imatrix.gguf [--json]

For every tensor both hold: the token counts, the Pearson correlation of log importance (the
quantizers weigh columns by it, so its shape across columns is what matters), the ratio of the
mean importances (a uniform factor changes no encoder's choice), and the relative RMS
difference once each is divided by its mean. Printed as the median and the worst over the
tensors of each kind (attn_q, ffn_down, ...), then over all.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np

from lowbit.quant import imatrix as imx

TINY = 1e-30    # a column that never saw activation: log of a floor, not of zero


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    la, lb = np.log(a + TINY), np.log(b + TINY)
    corr = float(np.corrcoef(la, lb)[0, 1]) if la.std() > 0 and lb.std() > 0 else 1.0
    na, nb = a / a.mean(), b / b.mean()
    return {"log_corr": corr, "mean_ratio": float(a.mean() / b.mean()),
            "rel_rms": float(np.sqrt(np.mean((na - nb) ** 2)) / np.sqrt(np.mean(nb ** 2)))}


def kind(name: str) -> str:
    return re.sub(r"^blk\.\d+\.", "", name).removesuffix(".weight")


def summarize(rows: list[dict]) -> dict:
    out = {"tensors": len(rows)}
    for key, worst in (("log_corr", min), ("mean_ratio", None), ("rel_rms", max)):
        values = [r[key] for r in rows]
        out[key + "_median"] = float(np.median(values))
        out[key + "_worst"] = (worst(values) if worst else
                               float(max(values, key=lambda v: abs(np.log(v)))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        a, b = imx.load(args.a), imx.load(args.b)
    except imx.ImatrixError as e:
        print(f"compare_imatrix: {e}", file=sys.stderr)
        return 1
    common = sorted(set(a.sums) & set(b.sums))
    if not common:
        print("compare_imatrix: the two matrices share no tensor", file=sys.stderr)
        return 1
    rows, by_kind = [], {}
    for name in common:
        ia, ib = a.importance(name), b.importance(name)
        if ia is None or ib is None or ia.size != ib.size:
            continue
        r = {"name": name, "kind": kind(name), "tokens_a": a.counts[name], "tokens_b": b.counts[name],
             **agreement(ia, ib)}
        rows.append(r)
        by_kind.setdefault(r["kind"], []).append(r)
    result = {"a": args.a, "b": args.b, "only_a": sorted(set(a.sums) - set(b.sums)),
              "only_b": sorted(set(b.sums) - set(a.sums)),
              "kinds": {k: summarize(v) for k, v in sorted(by_kind.items())}, "all": summarize(rows)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"A {args.a}: {len(a)} tensors, {a.chunk_count} chunks of {a.chunk_size}")
    print(f"B {args.b}: {len(b)} tensors, {b.chunk_count} chunks of {b.chunk_size}")
    print(f"only in A: {len(result['only_a'])}, only in B: {len(result['only_b'])}")
    tokens = sorted({(r["tokens_a"], r["tokens_b"]) for r in rows})
    print("tokens per tensor (A, B): " + ", ".join(f"{ta} / {tb}" for ta, tb in tokens[:4]))
    print()
    print("| kind | tensors | log-importance corr. median (worst) | mean A/B median (furthest) "
          "| rel. RMS diff. median (worst) |")
    print("|---|---:|---:|---:|---:|")
    for k, s in list(result["kinds"].items()) + [("all", result["all"])]:
        print(f"| {k} | {s['tensors']} | {s['log_corr_median']:.4f} ({s['log_corr_worst']:.4f}) "
              f"| {s['mean_ratio_median']:.3f} ({s['mean_ratio_worst']:.3f}) "
              f"| {s['rel_rms_median']:.3f} ({s['rel_rms_worst']:.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
