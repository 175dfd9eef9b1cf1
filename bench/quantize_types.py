"""Encoder throughput per type, whole files: `lowbit quantize --pure TYPE` against
`llama-quantize --pure ... TYPE`, with and without an importance matrix, on one synthetic F16
llama (bench/synthetic_llama.py), interleaved llama / lowbit / llama for each case.

    python bench/quantize_types.py --work DIR --layers 3 --types Q4_K,Q6_K,Q2_K,Q3_K,IQ4_XS \\
        --llama-bin LLAMA_CPP_BIN_DIR -t 2

Each run is a child process; its CPU seconds (user + system, from wait4) are the figure compared,
because on a shared machine they move far less than wall time does (both tools keep their
threads busy: wall time is about CPU time over the thread count on a quiet machine). The
importance matrix is bench/scale.py's synthetic one (the same file for both tools); types that
need one are measured with it only. The table (Markdown) goes to stdout; outputs are deleted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_llama as synth  # noqa: E402
from machine import describe  # noqa: E402
from scale import llama_cmd, lowbit_cmd, needs_imatrix, run_measured, synthetic_imatrix  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="directory for the source and outputs")
    p.add_argument("--layers", type=int, default=3, help="layers of the synthetic llama (3: 0.26 B parameters)")
    p.add_argument("--types", default="Q4_K,Q6_K,Q2_K,Q3_K,IQ4_XS,IQ2_XXS,IQ3_XXS")
    p.add_argument("--llama-bin", type=Path, required=True, help="directory holding llama-quantize")
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not (args.llama_bin / "llama-quantize").is_file():
        p.error(f"{args.llama_bin} holds no llama-quantize")
    if args.layers < 1:
        p.error("--layers must be at least 1")
    args.work.mkdir(parents=True, exist_ok=True)
    shape = synth.LlamaShape(n_layer=args.layers)
    src = args.work / f"synthetic-{args.layers}l.gguf"
    if not src.exists():
        synth.write(src, shape)
    im = synthetic_imatrix(args.work / f"synthetic-{args.layers}l.imatrix.gguf", shape)
    out = args.work / "out.gguf"
    # every kernel compiled before the timed runs, on a narrow model of the same plan
    narrow = synth.LlamaShape(args.layers, n_embd=256, n_ff=512, n_head=8, n_head_kv=1, n_vocab=512)
    warm = args.work / f"warm-up-{args.layers}l.gguf"
    if not warm.exists():
        synth.write(warm, narrow)
    warm_im = synthetic_imatrix(args.work / f"warm-up-{args.layers}l.imatrix.gguf", narrow)
    for qtype in args.types.split(","):
        for imatrix in ((warm_im,) if needs_imatrix(qtype) else (warm_im, None)):
            run_measured(lowbit_cmd(warm, out, qtype, args.threads, imatrix) + ["--pure"])
    print(f"Machine: {describe(args.threads)}; {src.name}, -t {args.threads}, --pure\n")
    print("| type | importance | llama-quantize CPU s (two runs) | lowbit CPU s | ratio |")
    print("|---|---|---:|---:|---:|")
    for qtype in args.types.split(","):
        for imatrix in ((im,) if needs_imatrix(qtype) else (im, None)):
            lc = llama_cmd(args.llama_bin, src, out, qtype, args.threads, imatrix)
            lc.insert(1, "--pure")
            ours = lowbit_cmd(src, out, qtype, args.threads, imatrix) + ["--pure"]
            first, mine, second = (run_measured(c)["cpu_s"] for c in (lc, ours, lc))
            out.unlink(missing_ok=True)
            print(f"| {qtype} | {'synthetic' if imatrix else 'none'} | {first:.1f}, {second:.1f} | {mine:.1f} "
                  f"| {2 * mine / (first + second):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
