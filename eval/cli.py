"""The `lowbit` command: one entry point, subcommands named after llama.cpp's tools."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lowbit.quant.gguffile import GGUFError, open_gguf


class UsageError(Exception):
    """Bad input from the user: printed as one sentence, exit status 1."""


def cmd_inspect(args) -> int:
    from .inspect_model import format_report, report
    from .model_store import resolve_model

    gguf = open_gguf(resolve_model(args.model))
    rep = report(gguf)
    if args.json:
        if args.tensors:
            rep["tensor_list"] = [
                {"name": t.name, "shape": list(t.shape), "type": t.qtype.name, "bytes": t.n_bytes}
                for t in gguf.tensors.values()]
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(format_report(rep, gguf, args.tensors))
    return 0


def cmd_models(args) -> int:
    from .model_store import KNOWN_MODELS, cached_path, pull

    if args.action == "list":
        for name, spec in KNOWN_MODELS.items():
            path = cached_path(name)
            state = str(path) if path.exists() else "not pulled"
            print(f"{name:<16} {spec.description:<48} {state}")
        return 0
    for name in args.names or list(KNOWN_MODELS):
        print(pull(name, progress=not args.quiet))
    return 0


def set_threads(n: int | None) -> None:
    """numba's threads (-t); numpy's OpenBLAS pool always to one thread: its idle threads spin
    on the cores numba's parallel loops need next (measured 2-3x slower prompts with 2 BLAS
    threads on 2 cores; eval/speed.py). `lowbit bench` sets the pool itself (--blas-threads)."""
    import numba

    from .machine import pin_threads
    if n is not None and not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise UsageError(f"-t must be between 1 and {numba.config.NUMBA_NUM_THREADS} on this machine, not {n}")
    pin_threads(n)


def load_model(name_or_path: str, precision: str = "exact"):
    from .loading import load_model as load
    model, tokenizer = load(name_or_path)
    model.precision = precision
    return model, tokenizer


def add_precision_args(s, default: str) -> None:
    """--exact / --fast: the activation precision of the integer products (runtime/model.py)."""
    g = s.add_mutually_exclusive_group()
    g.add_argument("--exact", dest="precision", action="store_const", const="exact",
                   help="activations in three int8 planes per block: float32-exact products" +
                        (" (default)" if default == "exact" else ""))
    g.add_argument("--fast", dest="precision", action="store_const", const="fast",
                   help="activations in one int8 plane per block, as llama.cpp's" +
                        (" (default)" if default == "fast" else ""))
    s.set_defaults(precision=default)


PRECISION_NOTE = {"exact": "exact activations (3 int8 planes per block of 32)",
                  "fast": "fast activations (1 int8 plane per block of 32)"}


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"text file {path} does not exist") from None
    except UnicodeDecodeError:
        raise UsageError(f"text file {path} is not UTF-8 text") from None


def cmd_perplexity(args) -> int:
    from .kld import KLDStats, compare_to_base, write_base
    from .perplexity import perplexity

    set_threads(args.threads)
    if args.kl_divergence and not args.kl_divergence_base:
        raise UsageError("--kl-divergence needs --kl-divergence-base FILE (made by a run without --kl-divergence)")
    text = read_text(args.file)
    model, tokenizer = load_model(args.model, args.precision)
    bar = progress_bar("perplexity", unit="chunk", disable=args.json)

    def progress(i, n, ppl):
        bar.total = n
        bar.set_postfix(ppl=f"{ppl:.4f}")
        bar.update(1)

    kld = None
    if args.kl_divergence:
        res, kld = compare_to_base(model, tokenizer, text, args.kl_divergence_base, args.ctx_size,
                                   args.chunks, on_chunk=progress)
    elif args.kl_divergence_base:
        res = write_base(model, tokenizer, text, Path(args.file).name, args.kl_divergence_base,
                         args.ctx_size, args.chunks, on_chunk=progress)
    else:
        res = perplexity(model, tokenizer, text, args.ctx_size, args.chunks, on_chunk=progress)
    bar.close()
    report = {"model": str(model.gguf.path), "file": args.file, "n_ctx": res.n_ctx,
              "chunks": res.n_chunks, "scored_tokens": res.n_scored, "ppl": res.ppl,
              "ppl_error": res.ppl_error, "running": res.running, "seconds": res.seconds,
              "precision": args.precision}
    if kld is not None:
        report["kld"] = kld
    if args.json:
        print(json.dumps(report))
        return 0
    print(",".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(res.running)))
    print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f}", flush=True)
    if kld is not None:
        print(KLDStats.format(kld))
    elif args.kl_divergence_base:
        print(f"wrote the base distributions to {args.kl_divergence_base}")
    print(f"({res.n_chunks} chunks of {res.n_ctx}, {res.n_scored} scored tokens, {res.seconds:.1f} s, "
          f"{PRECISION_NOTE[args.precision]})", file=sys.stderr)
    return 0

def sampler_from(args):
    from lowbit.runtime.sampling import Sampler, SamplerSettings
    return Sampler(SamplerSettings(temp=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                   repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                                   seed=args.seed))


def cmd_generate(args) -> int:
    from lowbit.runtime.generate import GenerationStats, TextStream, generate_tokens

    set_threads(args.threads)
    if not args.prompt:
        raise UsageError("the prompt is empty: give one with -p")
    model, tokenizer = load_model(args.model, args.precision)
    ids = tokenizer.encode(args.prompt, add_special=True, parse_special=args.special)
    cache = model.new_cache(args.ctx_size)
    stats = GenerationStats()
    stream = TextStream(tokenizer)
    if not args.no_echo:
        print(args.prompt, end="", flush=True)
    try:
        for token in generate_tokens(model, tokenizer, ids, cache, args.n_predict, sampler_from(args), stats):
            print(stream.push(token), end="", flush=True)
    except KeyboardInterrupt:
        stats.stopped_by = "interrupted"
    print(stream.flush())
    print(f"\n[{stats.summary()}; stopped: {stats.stopped_by}; {PRECISION_NOTE[args.precision]}]", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from lowbit.runtime.chat import ChatSession
    from lowbit.runtime.config import ModelError

    set_threads(args.threads)
    model, tokenizer = load_model(args.model, args.precision)
    session = ChatSession(model, tokenizer, args.ctx_size, sampler_from(args), args.system)
    print(f"lowbit chat with {model.gguf.path.name} ({model.cfg.arch_name}, {PRECISION_NOTE[args.precision]}); "
          f"/exit quits, /clear "
          f"starts over, Ctrl-C stops an answer.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n(type /exit to quit)", file=sys.stderr)
            continue
        cmd = line.strip()
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/clear":
            session.clear()
            continue
        if not cmd:
            continue
        before = (session.stats.generated_tokens, session.stats.generate_seconds)
        try:
            for piece in session.reply(line, args.n_predict):
                print(piece, end="", flush=True)
            print()
        except KeyboardInterrupt:
            print("\n[answer stopped]", file=sys.stderr)
        except ModelError as e:
            print(f"\n[{e}]", file=sys.stderr)
            continue
        n = session.stats.generated_tokens - before[0]
        secs = session.stats.generate_seconds - before[1]
        if n and secs:
            print(f"[{n} tokens, {n / secs:.1f} tokens/s]", file=sys.stderr)


def progress_bar(desc: str, total=None, unit="it", disable=False):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=disable or not sys.stderr.isatty(),
                unit_scale=True, dynamic_ncols=True)


def cmd_imatrix(args) -> int:
    from lowbit.quant import imatrix as imx
    from .imatrix_collect import collect_imatrix

    set_threads(args.threads)
    out = Path(args.output)
    if not out.parent.exists():
        raise UsageError(f"the output directory {out.parent} does not exist")
    text = read_text(args.file)
    model, tokenizer = load_model(args.model)
    bar = progress_bar("imatrix", unit="chunk")

    def step(i, n):
        bar.total = n
        bar.update(1)

    im = collect_imatrix(model, tokenizer, text, args.file, args.ctx_size, args.chunks,
                         args.process_output, on_chunk=step)
    bar.close()
    imx.save(im, out, legacy=args.legacy)
    print(f"wrote {out}: {len(im)} matrices, {im.chunk_count} chunks of {im.chunk_size} tokens "
          f"from {args.file}")
    return 0


def _recipe_for_budget(args, src, im) -> tuple[dict[str, str], str]:
    """Measure (or reuse) the sensitivity table, allocate under the budget, write the recipe."""
    from lowbit.quant.quantize_model import check_imatrix, check_requantize
    from lowbit.quant.recipes import is_quantizable
    from lowbit.quant.types import by_name
    from .dynamic import budget_label, plan_for_budget

    if im is None or not args.calib:
        raise UsageError("--target-bpw and --target-size need --imatrix FILE and --calib TEXT "
                         "(the calibration text on which each tensor's sensitivity is measured)")
    if args.sensitivity_tokens < 16:
        raise UsageError(f"--sensitivity-tokens must be at least 16, not {args.sensitivity_tokens}")
    recipe_path = Path(args.write_recipe or args.output + ".recipe")
    if not recipe_path.parent.exists():
        raise UsageError(f"the directory {recipe_path.parent} for the recipe does not exist")
    names = [n for n, t in src.tensors.items() if is_quantizable(n, t.shape)]
    check_imatrix(src, names, im)
    # any tensor may change type under a budget: refuse before the minutes of measurement
    check_requantize(src, names, args.allow_requantize)
    candidates = None
    if args.candidates:
        candidates = [by_name(t.strip()).name for t in args.candidates.split(",") if t.strip()]
    bar = progress_bar("sensitivity", unit="step")

    def step(text):
        bar.set_postfix_str(text)
        bar.update(1)

    table, alloc = plan_for_budget(src, im, args.imatrix, read_text(args.calib), args.sensitivity_tokens,
                                   recipe_path, args.target_bpw, args.target_size, candidates, step)
    bar.close()
    rc = table.rank_correlation
    print(f"sensitivity: {len(table.tensors)} tensors, {table.sample_tokens} tokens, {table.seconds:.0f} s; "
          f"held-out Spearman: error alone {rc.get('error_alone', float('nan')):.3f}, x kind gain "
          f"{rc.get('error_times_kind_gain', float('nan')):.3f}, x tensor gain "
          f"{rc.get('error_times_tensor_gain', float('nan')):.3f} ({rc.get('pairs', 0)} pairs)")
    print(f"wrote the recipe {recipe_path}: predicted KLD {alloc.predicted_kld:.4g}")
    return alloc.types, budget_label(args.target_bpw, args.target_size)


def cmd_quantize(args) -> int:
    from lowbit.quant import imatrix as imx
    from lowbit.quant.gguffile import open_gguf
    from lowbit.quant.quantize_model import quantize_model
    from lowbit.quant.allocate import read_recipe
    from lowbit.quant.recipes import PlanOptions
    from .model_store import resolve_model

    set_threads(args.threads)
    src = open_gguf(resolve_model(args.input))
    if not args.dry_run:
        out = Path(args.output)
        if not out.parent.exists():
            raise UsageError(f"the output directory {out.parent} does not exist")
        if out.resolve() == src.path.resolve():
            raise UsageError("the output would overwrite the input")
    overrides = []
    for spec in args.tensor_type or []:
        if "=" not in spec:
            raise UsageError(f"--tensor-type takes REGEX=TYPE, not {spec!r}")
        rx, t = spec.rsplit("=", 1)
        overrides.append((rx, t))
    modes = [args.type is not None, args.target_bpw is not None or args.target_size is not None,
             args.recipe is not None]
    if sum(modes) != 1:
        raise UsageError("give one of TYPE, --target-bpw/--target-size (with --imatrix and --calib) or --recipe")
    if args.target_bpw is not None and args.target_size is not None:
        raise UsageError("give --target-bpw or --target-size, not both")
    im = imx.load(args.imatrix) if args.imatrix else None
    label = args.type
    if args.type is not None:
        opts = PlanOptions(args.type, pure=args.pure, output_type=args.output_tensor_type,
                           token_embedding_type=args.token_embedding_type, overrides=overrides)
    else:
        if overrides or args.pure or args.output_tensor_type or args.token_embedding_type:
            raise UsageError("--tensor-type, --pure and the output/embedding types go with TYPE, not with "
                             "a budget or a recipe (edit the recipe instead)")
        recipe, label = ((read_recipe(args.recipe), f"recipe {Path(args.recipe).name}") if args.recipe
                         else _recipe_for_budget(args, src, im))
        opts = PlanOptions(None, recipe=recipe)
    total = sum(t.n_elements for t in src.tensors.values())
    bar = progress_bar(f"quantize {label}", total=total, unit="w", disable=args.dry_run)
    summary = quantize_model(src, args.output, opts, im, args.allow_requantize, args.dry_run,
                             args.imatrix, progress=bar.update)
    bar.close()
    if args.dry_run:
        for c in summary.choices:
            t = src.tensors[c.name]
            shape = " x ".join(map(str, t.shape))
            print(f"{c.name:<32} {shape:>14}  {t.qtype.name:>7} -> {c.qtype.name:<8} {c.reason}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.type_counts.items(), key=lambda kv: -kv[1]))
    size = summary.file_bytes or summary.n_bytes
    print(f"{'plan' if args.dry_run else 'wrote ' + args.output}: {size / 2**20:.2f} MiB, "
          f"{summary.bpw:.3f} bits per weight over {summary.n_params:,} weights ({counts}); "
          f"{summary.seconds:.1f} s")
    return 0


def cmd_bench(args) -> int:
    import os

    import numba

    from lowbit.runtime.config import read_config
    from . import speed
    from .model_store import resolve_model

    prompts = speed.parse_counts(args.n_prompt, "-p", 0)
    gens = speed.parse_counts(args.n_gen, "-n", 0)
    reps = speed.parse_count(args.repetitions, "-r", 1)
    threads = speed.parse_counts(args.threads, "-t") if args.threads else [numba.get_num_threads()]
    blas_threads = speed.parse_count(args.blas_threads, "--blas-threads", 1)
    if blas_threads > (os.cpu_count() or 1):
        raise UsageError(f"--blas-threads must be between 1 and {os.cpu_count()} on this machine, not {blas_threads}")
    for n in threads:
        set_threads(n)  # checks each count against the machine before anything runs
    tests = speed.tests_for(prompts, gens)
    if not tests:
        raise UsageError("-p and -n are both 0, so there is nothing to measure")
    paths = [resolve_model(m) for m in args.models]
    for path in paths:
        read_config(open_gguf(path))  # a missing, broken or unsupported file fails here, not midway
    bar = progress_bar("bench", total=len(paths) * len(threads) * len(tests) * (reps + 1), unit="run")

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


def _floats(text: str | None, flag: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, not {text!r}") from None


def cmd_ladder(args) -> int:
    from .ladder import Ladder, LadderConfig
    from .machine import describe
    from .model_store import resolve_model
    from .report import write_report

    if args.imatrix is None and args.calib is None:
        raise UsageError("give --imatrix FILE or --calib TEXT (or both: --calib then only measures "
                         "the sensitivity that --allocate needs)")
    for path in (args.file, args.calib, args.imatrix):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{path} does not exist")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    if not types:
        raise UsageError("--types needs at least one type")
    cfg = LadderConfig(
        model=resolve_model(args.model), eval_text=Path(args.file), out_dir=Path(args.output), types=types,
        imatrix=Path(args.imatrix) if args.imatrix else None,
        calib_text=Path(args.calib) if args.calib else None,
        with_and_without=args.with_and_without_imatrix, n_ctx=args.ctx_size,
        chunks=args.chunks, calib_chunks=args.calib_chunks, threads=args.threads,
        bench_prompt=args.bench_prompt, bench_gen=args.bench_gen, bench_reps=args.bench_reps,
        keep_files=not args.delete_files, allocate=_floats(args.allocate, "--allocate"),
        sensitivity_tokens=args.sensitivity_tokens)
    set_threads(args.threads)
    bar = progress_bar("ladder", unit="stage")

    def stage(text):
        bar.set_description_str(f"ladder: {text}")
        bar.update(1)
        if not sys.stderr.isatty():
            print(f"ladder: {text}", file=sys.stderr, flush=True)

    data = Ladder(cfg, stage, set_threads).run()
    bar.close()
    report = write_report(data, cfg.out_dir, describe(args.threads))
    print(report.read_text())
    print(f"wrote {report} and {cfg.out_dir / 'results.json'}")
    return 0


def add_sampling_args(s) -> None:
    s.add_argument("--temp", type=float, default=0.8, help="temperature; 0 is greedy (default 0.8)")
    s.add_argument("--top-k", type=int, default=40)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--min-p", type=float, default=0.05)
    s.add_argument("--repeat-penalty", type=float, default=1.0)
    s.add_argument("--repeat-last-n", type=int, default=64)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("-t", "--threads", type=int, default=None)
    s.add_argument("-c", "--ctx-size", type=int, default=4096)
    s.add_argument("-n", "--n-predict", type=int, default=-1, help="tokens to generate (-1: until done)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="architecture, tokenizer and per-type sizes of a GGUF file")
    s.add_argument("model", help="a GGUF file or a model name (see `lowbit models list`)")
    s.add_argument("--tensors", action="store_true", help="also list every tensor")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("perplexity", help="perplexity of a text, as llama-perplexity computes it")
    s.add_argument("model")
    s.add_argument("-f", "--file", required=True, help="the text (e.g. wiki.test.raw)")
    s.add_argument("-c", "--ctx-size", type=int, default=512)
    s.add_argument("--chunks", type=int, default=None, help="at most this many chunks (default: all)")
    s.add_argument("-t", "--threads", type=int, default=None)
    s.add_argument("--json", action="store_true", help="print one JSON object instead")
    s.add_argument("--kl-divergence-base", metavar="FILE",
                   help="without --kl-divergence: store this model's distributions in FILE; "
                        "with it: the base to compare against")
    s.add_argument("--kl-divergence", action="store_true",
                   help="report the KL-divergence from the base distributions in --kl-divergence-base")
    add_precision_args(s, "exact")
    s.set_defaults(func=cmd_perplexity)

    s = sub.add_parser("generate", help="continue a prompt, streaming the tokens")
    s.add_argument("model")
    s.add_argument("-p", "--prompt", required=True)
    s.add_argument("--special", action="store_true", help="parse special tokens in the prompt")
    s.add_argument("--no-echo", action="store_true", help="do not print the prompt")
    add_sampling_args(s)
    add_precision_args(s, "fast")
    s.set_defaults(func=cmd_generate, n_predict=128)

    s = sub.add_parser("chat", help="interactive multi-turn chat with the model's template")
    s.add_argument("model")
    s.add_argument("-s", "--system", default=None, help="system prompt")
    add_sampling_args(s)
    add_precision_args(s, "fast")
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("imatrix", help="collect an importance matrix over calibration text")
    s.add_argument("model")
    s.add_argument("-f", "--file", required=True, help="calibration text (e.g. wiki.valid.raw)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-c", "--ctx-size", type=int, default=512)
    s.add_argument("--chunks", type=int, default=None)
    s.add_argument("--process-output", action="store_true", help="include the output matrix")
    s.add_argument("--legacy", action="store_true", help="write the legacy .dat format")
    s.add_argument("-t", "--threads", type=int, default=None)
    s.set_defaults(func=cmd_imatrix)

    s = sub.add_parser("quantize", help="quantize a model to a type or a llama.cpp preset",
                       epilog="--tensor-type patterns are searched in each tensor name in the order "
                              "given; the first match wins and overrides the preset's rules.")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("type", nargs="?", help="a GGML type (Q4_K, IQ2_XXS, ...) or a preset (Q4_K_M, IQ2_M, ...); "
                                          "not with --target-bpw, --target-size or --recipe")
    s.add_argument("--imatrix", help="importance matrix (GGUF or legacy .dat)")
    s.add_argument("--target-bpw", type=float, metavar="B",
                   help="choose a type per tensor for B bits per weight over the whole file, from each "
                        "tensor's measured sensitivity (needs --imatrix and --calib)")
    s.add_argument("--target-size", type=int, metavar="BYTES", help="the same for a file size in bytes")
    s.add_argument("--calib", metavar="TEXT", help="calibration text for the sensitivity measurement")
    s.add_argument("--sensitivity-tokens", type=int, default=512,
                   help="calibration tokens each sensitivity measurement runs (default 512)")
    s.add_argument("--candidates", metavar="T1,T2,...",
                   help="the types a budget may choose among (default: every K, i- and 32-block type)")
    s.add_argument("--write-recipe", metavar="FILE", help="where the allocated plan goes (default OUTPUT.recipe)")
    s.add_argument("--recipe", metavar="FILE", help="quantize with the types a recipe file names")
    s.add_argument("--pure", action="store_true", help="every quantizable tensor gets TYPE (no rules)")
    s.add_argument("--allow-requantize", action="store_true", help="allow a quantized source")
    s.add_argument("--output-tensor-type")
    s.add_argument("--token-embedding-type")
    s.add_argument("--tensor-type", action="append", metavar="REGEX=TYPE")
    s.add_argument("--dry-run", action="store_true", help="print the per-tensor plan and size only")
    s.add_argument("-t", "--threads", type=int, default=None)
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("bench", help="prompt processing and generation speed, as llama-bench",
                       epilog="-p, -n and -t take comma-separated lists. Each test runs once untimed "
                              "first. numpy's BLAS (the attention) runs on --blas-threads, not -t: see "
                              "eval/speed.py for why.")
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
    s.set_defaults(func=cmd_bench)

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
    s.add_argument("--sensitivity-tokens", type=int, default=512)
    s.set_defaults(func=cmd_ladder)

    s = sub.add_parser("models", help="list or pull the known real models")
    s.add_argument("action", choices=["list", "pull"])
    s.add_argument("names", nargs="*", help="models to pull (default: all)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (GGUFError, UsageError, ValueError, OSError) as e:
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lowbit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
