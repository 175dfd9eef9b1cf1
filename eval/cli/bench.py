"""`lowbit bench`: prompt processing and generation speed, memory and start-up, as llama-bench."""
from __future__ import annotations

import json

from ..machine import check_threads
from ..progress import Progress
from .common import UsageError, add_precision_args


def add_parser(sub) -> None:
    s = sub.add_parser("bench", help="prompt processing and generation speed, as llama-bench",
                       epilog="-p, -n and -t take comma-separated lists. Each test runs once untimed "
                              "first. -t is numba's threads, which run the whole forward pass; numpy's "
                              "BLAS pool, which it does not use, is held at --blas-threads.")
    s.add_argument("models", nargs="+", metavar="MODEL")
    s.add_argument("-p", "--n-prompt", default="512", help="prompt lengths; 0 skips the test (default 512)")
    s.add_argument("-n", "--n-gen", default="128", help="tokens to generate; 0 skips the test (default 128)")
    s.add_argument("-t", "--threads", default=None, help="thread counts (default: numba's default)")
    s.add_argument("-r", "--repetitions", default="5", help="timed runs of each test (default 5)")
    s.add_argument("--cold", action="store_true",
                   help="also time a start-up with an empty numba cache (compiles every kernel)")
    s.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    s.add_argument("--blas-threads", default="1", help="threads of numpy's BLAS pool (default 1)")
    add_precision_args(s, "fast")
    s.add_argument("--json", action="store_true", help="print a JSON list of results instead")
    s.set_defaults(func=run)


def run(args) -> int:
    import os

    import numba

    from lowbit.quant.gguffile import open_gguf
    from lowbit.runtime.config import read_config

    from .. import speed
    from ..model_store import resolve_model

    prompts = speed.parse_counts(args.n_prompt, "-p", 0)
    gens = speed.parse_counts(args.n_gen, "-n", 0)
    reps = speed.parse_count(args.repetitions, "-r", 1)
    threads = speed.parse_counts(args.threads, "-t") if args.threads else [numba.get_num_threads()]
    blas_threads = speed.parse_count(args.blas_threads, "--blas-threads", 1)
    if blas_threads > (os.cpu_count() or 1):
        raise UsageError(f"--blas-threads must be between 1 and {os.cpu_count()} on this machine, not {blas_threads}")
    for n in threads:
        check_threads(n)  # each count against the machine before anything runs
    tests = speed.tests_for(prompts, gens)
    if not tests:
        raise UsageError("-p and -n are both 0, so there is nothing to measure")
    paths = [resolve_model(m) for m in args.models]
    for path in paths:
        read_config(open_gguf(path))  # a missing, broken or unsupported file fails here, not midway
    bar = Progress("bench", total=len(paths) * len(threads) * len(tests) * (reps + 1), unit="runs")

    def progress(stage, n):
        if stage:
            bar.set_postfix_str(stage)
        bar.update(n)

    results = speed.bench(paths, threads, prompts, gens, reps, cold=args.cold,
                          startup_runs=not args.no_startup, blas_threads=blas_threads, progress=progress,
                          precision=args.precision)
    bar.close()
    print(json.dumps(results, indent=2) if args.json else speed.format_table(results))
    return 0
