"""Quantize a model with Hessian error feedback and/or activation-aware scales (eval/layer_pass.py)
and, beside it, the same preset plainly; then both perplexities, so the method is judged by the model's output and not
only by each matrix's output error.

    python bench/gptq_trial.py MODEL PRESET --imatrix F --calib wiki.valid.raw -f wiki.test.raw
        --work DIR [--calib-chunks 5] [--held-out-chunks 2] [--calib-skip 0.5] [--damp 0.01]
        [--tokens-as-they-are] [--awq] [--no-gptq] [--plain FILE] [--kl-divergence-base BASE] [--chunks 20] [-t 2]

Writes DIR/gptq.gguf and, unless --plain names the preset's plainly made file already, DIR/
plain.gguf (the GPTQ pass's per-matrix lines go to stdout), then prints both files' PPL over
--chunks chunks of -f, and their KLD against BASE (`lowbit perplexity --kl-divergence-base`
of the source on the same text and -c) when given. --calib-skip: the share of the calibration
text skipped first, so that the chunks the method fits are not the ones it is judged on when
-f is the same text.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.eval.layer_pass import layer_pass
from lowbit.eval.kld import compare_to_base
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
    p.add_argument("--tokens-as-they-are", action="store_true",
                   help="H summed over the tokens' inputs as they are (default: each scaled to unit mean square)")
    p.add_argument("--awq", action="store_true", help="activation-aware scales folded into norms and v/up rows")
    p.add_argument("--no-gptq", action="store_true", help="no error feedback (with --awq: scales alone)")
    p.add_argument("--calib-skip", type=float, default=0.0, help="share of the calibration text skipped")
    p.add_argument("--plain", type=Path, help="the preset made plainly, if made already")
    p.add_argument("--kl-divergence-base", type=Path)
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
    t0 = time.perf_counter()
    plain_path, plain_s = args.plain, None
    if plain_path is None:
        plain_path = args.work / "plain.gguf"
        quantize_model(src, plain_path, PlanOptions(args.preset), im, True, imatrix_path=args.imatrix)
        plain_s = time.perf_counter() - t0
    model, tok = load_model(src.path)
    calib = read_text(args.calib)
    calib = calib[int(len(calib) * args.calib_skip):]
    stage = lambda il, s: print(f"[{time.perf_counter() - t0:7.0f} s, peak {peak_mib():.0f} MiB] layer {il}: {s}",
                                flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as d:
        start = time.perf_counter()
        files, reports, scale_reports = layer_pass(
            model, tok, src, {c.name: c.qtype for c in choices}, calib, args.ctx_size, args.calib_chunks,
            args.held_out_chunks, Path(d), im, args.damp, not args.tokens_as_they_are, stage, gptq=not args.no_gptq,
            awq_scales=args.awq)
        del model
        quantize_model(src, args.work / "gptq.gguf", PlanOptions(args.preset), im, True,
                       imatrix_path=args.imatrix, encoded=files)
        gptq_s = time.perf_counter() - start
    for r in reports:
        print(f"{r.name:<28} {r.qtype:<8} held-out output error {r.ratio:.3f} of plain: kept {r.kept}")
    for r in scale_reports:
        print(f"layer {r.layer:>2} {r.matrices:<28} alpha {r.alpha:.1f}, sampled rows' held-out error "
              f"{r.held_out_ratio:.3f} of plain {r.note}")
    kept = sum(r.kept == "gptq" for r in reports)
    print(f"feedback kept for {kept} of {len(reports)} matrices; kept encodings' held-out output error "
          f"{np.mean([min(r.ratio, 1.0) for r in reports]):.3f} of plain on average")
    print(f"gptq file made in {gptq_s:.0f} s, peak RSS {peak_mib():.0f} MiB"
          + (f"; plain in {plain_s:.0f} s" if plain_s is not None else ""))
    text = read_text(args.file)
    for name, path in (("plain", plain_path), ("gptq", args.work / "gptq.gguf")):
        m, t = load_model(path)
        if args.kl_divergence_base:
            res, kld = compare_to_base(m, t, text, args.kl_divergence_base, args.ctx_size, args.chunks)
            print(f"{name}: PPL {res.ppl:.4f} +/- {res.ppl_error:.4f}, mean KLD {kld['mean']:.4f} +/- "
                  f"{kld['stderr']:.4f}, same top {100 * kld['same_top']:.1f} % over {res.n_chunks} chunks")
        else:
            res = perplexity(m, t, text, args.ctx_size, args.chunks)
            print(f"{name}: PPL {res.ppl:.4f} +/- {res.ppl_error:.4f} over {res.n_chunks} chunks")
    return 0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
