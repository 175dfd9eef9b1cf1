"""`lowbit ladder`: quantize a model to many types and measure each (eval/ladder.py)."""
from __future__ import annotations

from pathlib import Path

from ..machine import set_threads
from ..progress import Progress
from .common import UsageError


def add_parser(sub) -> None:
    s = sub.add_parser("ladder", help="quantize a model to many types and measure each")
    s.add_argument("model")
    s.add_argument("-f", "--file", required=True, help="evaluation text (e.g. wiki.test.raw)")
    s.add_argument("--imatrix", help="importance matrix to quantize with")
    s.add_argument("--calib", help="calibration text to collect the importance matrix from")
    s.add_argument("--calib-chunks", type=int, default=40)
    s.add_argument("--types", required=True, help="comma-separated types or presets, e.g. Q4_K_M,IQ2_M")
    s.add_argument("--with-and-without-imatrix", action="store_true",
                   help="also quantize each type without the importance matrix, where llama.cpp allows it")
    s.add_argument("-o", "--output", required=True, help="directory for files, results.json and the report")
    s.add_argument("-c", "--ctx-size", type=int, default=512)
    s.add_argument("--chunks", type=int, default=20, help="evaluation chunks (default 20)")
    s.add_argument("-t", "--threads", type=int, default=2)
    s.add_argument("--bench-prompt", type=int, default=128, help="pp test length (0: none)")
    s.add_argument("--bench-gen", type=int, default=32, help="tg test length (0: none)")
    s.add_argument("--bench-reps", type=int, default=2)
    s.add_argument("--delete-files", action="store_true", help="delete each quantized file once measured")
    s.add_argument("--allocate", metavar="B1,B2,...",
                   help="also lowbit's own per-tensor mixes at these bits per weight (needs --calib)")
    s.add_argument("--allocate-without-source-types", metavar="B1,B2,...",
                   help="mixes at these bits per weight that do not take the source's own quantized types "
                        "(which can reproduce a tensor exactly): what an unquantized source would gain")
    s.add_argument("--methods", metavar="M1,M2,...",
                   help="each preset also made with these, as entries of their own: gptq (Hessian error "
                        "feedback), awq (activation-aware scales), gptq+awq (needs --calib; as lowbit "
                        "quantize --gptq/--awq)")
    s.add_argument("--sensitivity-tokens", type=int, default=512)
    s.add_argument("--sensitivity", choices=["tensor", "kind"], default="tensor",
                   help="the mixes' gains: measured per tensor, or per tensor kind at 4 depths (for large models)")
    s.add_argument("--llama-quantize", metavar="PATH",
                   help="llama.cpp's llama-quantize binary: each preset also made by it (same source, importance "
                        "matrix and threads) and measured by lowbit, as entries of their own")
    s.add_argument("--extra-text", metavar="FILE|python-stdlib",
                   help="a second evaluation text, PPL and KLD of every entry on it too; python-stdlib: a "
                        "fixed sample of this Python's standard library source, read at run time")
    s.add_argument("--extra-chunks", type=int, default=20, help="chunks of the second text (default 20)")
    s.add_argument("--cluster", metavar="ADDRESS",
                   help="run the entries and the sensitivity on a running Dask cluster (tcp://HOST:8786; "
                        "pip install 'lowbit[cluster]'): quality only, no speed, the files deleted on the workers")
    s.set_defaults(func=run)


def floats(text: str | None, flag: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, not {text!r}") from None


def run(args) -> int:
    from ..cluster import connected
    from ..ladder import Ladder, LadderConfig
    from ..machine import describe
    from ..model_store import resolve_model
    from ..report import write_report

    cfg = LadderConfig(
        model=resolve_model(args.model), eval_text=Path(args.file), out_dir=Path(args.output),
        types=[t.strip() for t in args.types.split(",") if t.strip()],
        imatrix=Path(args.imatrix) if args.imatrix else None,
        calib_text=Path(args.calib) if args.calib else None,
        with_and_without=args.with_and_without_imatrix, n_ctx=args.ctx_size,
        chunks=args.chunks, calib_chunks=args.calib_chunks, threads=args.threads,
        bench_prompt=args.bench_prompt, bench_gen=args.bench_gen, bench_reps=args.bench_reps,
        keep_files=not args.delete_files, allocate=floats(args.allocate, "--allocate"),
        allocate_without_source=floats(args.allocate_without_source_types, "--allocate-without-source-types"),
        sensitivity_tokens=args.sensitivity_tokens, sensitivity_mode=args.sensitivity,
        llama_quantize=Path(args.llama_quantize) if args.llama_quantize else None,
        extra_text=args.extra_text, extra_chunks=args.extra_chunks,
        methods=[m.strip() for m in (args.methods or "").split(",") if m.strip()])
    set_threads(args.threads)
    bar = Progress("ladder", unit="stages")
    with connected(args.cluster) as cluster:
        data = Ladder(cfg, bar.stage, set_threads, cluster).run()
        machine = (describe(args.threads) if cluster is None else
                   f"a Dask cluster of {cluster.n_workers()} workers at {cluster.address} (quality only)")
    bar.close()
    report = write_report(data, cfg.out_dir, machine)
    print(report.read_text())
    print(f"wrote {report} and {cfg.out_dir / 'results.json'}")
    return 0
