"""Quantize a model with Hessian error feedback (eval/gptq_pass.py) and, beside it, the same
preset plainly; then both perplexities, so the method is judged by the model's output and not
only by each matrix's output error.

    python bench/gptq_trial.py MODEL PRESET --imatrix F --calib wiki.valid.raw -f wiki.test.raw
        --work DIR [--calib-chunks 5] [--held-out-chunks 2] [--damp 0.01] [--per-token]
        [--chunks 20] [-t 2]

Writes DIR/plain.gguf and DIR/gptq.gguf (the GPTQ pass's per-matrix lines go to stdout), then
prints both files' PPL over --chunks chunks of -f.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.eval.gptq_pass import gptq_pass
from lowbit.eval.loading import load_model, read_text
from lowbit.eval.machine import set_threads
from lowbit.eval.model_store import resolve_model
from lowbit.eval.perplexity import perplexity
from lowbit.quant import imatrix as imx
from lowbit.quant.gguffile import open_gguf
from lowbit.quant.quantize_model import check_plan, make_plan, quantize_model
from lowbit.quant.recipes import PlanOptions


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("preset")
    p.add_argument("--imatrix")
    p.add_argument("--calib", required=True)
    p.add_argument("-f", "--file", required=True, help="evaluation text")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--calib-chunks", type=int, default=5)
    p.add_argument("--held-out-chunks", type=int, default=2)
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--per-token", action="store_true", help="each token's input scaled to unit mean square")
    p.add_argument("-c", "--ctx-size", type=int, default=512)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args(argv)
    set_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    src = open_gguf(resolve_model(args.model))
    im = imx.load(args.imatrix) if args.imatrix else None
    opts = PlanOptions(args.preset)
    opts.has_imatrix = im is not None
    choices = make_plan(src, opts)
    check_plan(src, choices, opts, im, allow_requantize=True)
    start = time.perf_counter()
    quantize_model(src, args.work / "plain.gguf", PlanOptions(args.preset), im, True, imatrix_path=args.imatrix)
    plain_s = time.perf_counter() - start
    model, tok = load_model(src.path)
    with tempfile.TemporaryDirectory(dir=args.work) as d:
        start = time.perf_counter()
        files, reports = gptq_pass(model, tok, src, {c.name: c.qtype for c in choices}, read_text(args.calib),
                                   args.ctx_size, args.calib_chunks, args.held_out_chunks, Path(d), im,
                                   args.damp, args.per_token)
        del model
        quantize_model(src, args.work / "gptq.gguf", PlanOptions(args.preset), im, True,
                       imatrix_path=args.imatrix, encoded=files)
        gptq_s = time.perf_counter() - start
    for r in reports:
        print(f"{r.name:<28} {r.qtype:<8} held-out output error {r.ratio:.3f} of plain: kept {r.kept}")
    kept = sum(r.kept == "gptq" for r in reports)
    print(f"feedback kept for {kept} of {len(reports)} matrices; kept encodings' held-out output error "
          f"{np.mean([min(r.ratio, 1.0) for r in reports]):.3f} of plain on average")
    text = read_text(args.file)
    for name, seconds in (("plain", plain_s), ("gptq", gptq_s)):
        m, t = load_model(args.work / f"{name}.gguf")
        res = perplexity(m, t, text, args.ctx_size, args.chunks)
        print(f"{name}: PPL {res.ppl:.4f} +/- {res.ppl_error:.4f} over {res.n_chunks} chunks; made in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
