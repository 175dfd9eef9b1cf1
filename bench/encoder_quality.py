"""Encoder quality and speed against ggml's reference quantizers (libgguf), on real weight rows.

    python bench/encoder_quality.py [--types Q2_K,IQ2_XXS] [--model smollm2-135m|gemma3-270m]
        [--imatrix FILE] [--layers 0,7,15,22,29] [--json OUT]

Rows: the real models' weight matrices whose rows are multiples of 256 (SmolLM2 ffn_down; Gemma
attn_output and ffn_down; Qwen2.5-Coder-1.5B ffn_down and ffn_up, real-size shapes), decoded
exactly from the file. For each type, the error
E = sum_i imp_i (x_i - q_i)^2, with imp the importance matrix (mean squared activations), of
lowbit's encoding and of libgguf's on the same rows and importance; the ratio is ours / theirs
(below 1: lowbit is better). Without importance the error is unweighted and both encoders get
none (only for types ggml allows without an imatrix). Speed: seconds per million weights, both
on one thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from lowbit.eval.model_store import resolve_model  # noqa: E402
from lowbit.quant import imatrix as imx  # noqa: E402
from lowbit.quant.decode import dequantize  # noqa: E402
from lowbit.quant.encode import quantize  # noqa: E402
from lowbit.quant.gguffile import open_gguf  # noqa: E402
from lowbit.quant.types import all_types, by_name  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TENSORS = {"smollm2-135m": ["ffn_down"], "gemma3-270m": ["attn_output", "ffn_down"],
           "qwen2.5-coder-1.5b": ["ffn_down", "ffn_up"]}      # 1536 x 8960 and 8960 x 1536
DEFAULT_LAYERS = {"smollm2-135m": [0, 7, 15, 22, 29], "gemma3-270m": [0, 6, 12, 17], "qwen2.5-coder-1.5b": [14]}
DEFAULT_IMATRIX = {"smollm2-135m": DATA / "smollm2-135m.wiki.valid.imatrix",
                   "qwen2.5-coder-1.5b": DATA / "qwen2.5-coder-1.5b.wiki.valid.imatrix.gguf"}


def reference_quantize(rows, qtype, imp):
    import libgguf
    return np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imp), dtype=np.uint8)


def weighted_error(rows, raw, qtype, imp):
    q = dequantize(raw, qtype, rows.shape).astype(np.float64)
    d2 = np.square(rows.astype(np.float64) - q)
    return float((d2 * imp).sum()) if imp is not None else float(d2.sum())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(qtype, matrices, with_importance):
    import libgguf
    ours_e = ref_e = ours_t = ref_t = 0.0
    n_weights = 0
    for rows, imp in matrices:
        imp = imp if with_importance else None
        quantize(rows[:4], qtype, imp)  # JIT warm-up, excluded
        raw, t1 = timed(lambda: quantize(rows, qtype, imp))
        ref, t2 = timed(lambda: reference_quantize(rows, qtype, imp))
        ours_e += weighted_error(rows, raw, qtype, imp)
        ref_e += weighted_error(rows, ref, qtype, imp)
        ours_t += t1
        ref_t += t2
        n_weights += rows.size
    return {"ratio": ours_e / ref_e if ref_e else float("nan"),
            "ours_s_per_mw": ours_t / n_weights * 1e6, "ref_s_per_mw": ref_t / n_weights * 1e6}


def load_matrices(model, im, layers):
    g = open_gguf(resolve_model(model))
    out = []
    for kind in TENSORS[model]:
        for layer in layers:
            name = f"blk.{layer}.{kind}.weight"
            t = g.tensors[name]
            rows = dequantize(g.raw(name), t.qtype, t.shape)
            imp = im.importance(name) if im is not None else None
            if imp is None:
                raise SystemExit(f"the importance matrix has no entry for {name}")
            out.append((rows, imp))
    return out


def main(argv=None):
    import libgguf
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--types", help="comma-separated (default: every type lowbit can encode)")
    p.add_argument("--model", default="smollm2-135m", choices=list(TENSORS))
    p.add_argument("--imatrix", help="importance matrix for the model (GGUF or legacy .dat)")
    p.add_argument("--layers", help="comma-separated layer indices")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    numba.set_num_threads(1)
    imatrix_path = args.imatrix or DEFAULT_IMATRIX.get(args.model)
    if imatrix_path is None:
        raise SystemExit(f"give --imatrix for {args.model}")
    im = imx.load(imatrix_path)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else DEFAULT_LAYERS[args.model]
    matrices = load_matrices(args.model, im, layers)
    types = ([by_name(t) for t in args.types.split(",")] if args.types
             else [t for t in all_types() if t.encode_row is not None and not t.is_float])
    n_weights = sum(r.size for r, _ in matrices)
    print(f"machine: {describe(1)}")
    print(f"model {args.model}, {len(matrices)} matrices ({', '.join(TENSORS[args.model])} of layers "
          f"{','.join(map(str, layers))}), {n_weights / 1e6:.2f} M weights; imatrix {imatrix_path}")
    print()
    print("| type | bpw | E ratio, imatrix | E ratio, none | lowbit s/Mw | libgguf s/Mw | time ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = []
    for qtype in types:
        r = {"type": qtype.name, "bpw": qtype.bits_per_weight, **measure(qtype, matrices, True)}
        if not libgguf.quantize_requires_imatrix(qtype.ggml_id):
            plain = measure(qtype, matrices, False)
            r["ratio_no_imatrix"] = plain["ratio"]
        results.append(r)
        none = f"{r['ratio_no_imatrix']:.4f}" if "ratio_no_imatrix" in r else "needs imatrix"
        print(f"| {qtype.name} | {qtype.bits_per_weight:.4g} | {r['ratio']:.4f} | {none} "
              f"| {r['ours_s_per_mw']:.3f} | {r['ref_s_per_mw']:.3f} "
              f"| {r['ours_s_per_mw'] / r['ref_s_per_mw']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
