"""`lowbit quantize`: to a type or a llama.cpp preset, to a size budget, or by a recipe."""
from __future__ import annotations

from pathlib import Path

from ..loading import check_output_dir, pass_work_dir, read_text
from ..machine import set_threads
from ..progress import Progress
from .common import UsageError


def add_parser(sub) -> None:
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
    s.add_argument("--calib", metavar="TEXT",
                   help="calibration text for the sensitivity measurement, --gptq and --awq")
    s.add_argument("--gptq", action="store_true",
                   help="Hessian error feedback: each layer's matrices encoded a block width of columns at a "
                        "time, the rounding error pushed onto the columns not yet encoded (needs --calib)")
    s.add_argument("--awq", action="store_true",
                   help="activation-aware scales, folded into the norms and the v/up rows before each matrix "
                        "(needs --calib); either method is kept per matrix only where it lowers the output "
                        "error on held-out calibration chunks")
    s.add_argument("--calib-chunks", type=int, default=10, metavar="N",
                   help="--gptq/--awq: calibration chunks of 512 tokens to fit (default 10)")
    s.add_argument("--held-out-chunks", type=int, default=4, metavar="N",
                   help="--gptq/--awq: the chunks after them, to judge each matrix on (default 4)")
    s.add_argument("--sensitivity-tokens", type=int, default=512,
                   help="calibration tokens each sensitivity measurement runs (default 512)")
    s.add_argument("--sensitivity", choices=["tensor", "kind"], default="tensor",
                   help="tensor: measure every tensor's gain (one model run per tensor); kind: measure "
                        "each tensor kind at 4 depths and give the other layers their kind's median (for large models)")
    s.add_argument("--cluster", metavar="ADDRESS",
                   help="measure the sensitivity on a running Dask cluster (tcp://HOST:8786; "
                        "pip install 'lowbit[cluster]'), one task per tensor")
    s.add_argument("--candidates", metavar="T1,T2,...",
                   help="the types a budget may choose among (default: every K, i- and 32-block type)")
    s.add_argument("--write-recipe", metavar="FILE", help="where the allocated plan goes (default OUTPUT.recipe)")
    s.add_argument("--recipe", metavar="FILE", help="quantize with the types a recipe file names")
    s.add_argument("--pure", action="store_true", help="every quantizable tensor gets TYPE (no rules)")
    s.add_argument("--allow-requantize", action="store_true", help="allow a quantized source")
    s.add_argument("--output-tensor-type")
    s.add_argument("--token-embedding-type")
    s.add_argument("--tensor-type", action="append", metavar="REGEX=TYPE")
    s.add_argument("--split-max-size", metavar="SIZE",
                   help="write shards of at most SIZE of tensor data each (500M, 2G; a larger tensor gets "
                        "a shard of its own), named OUTPUT-00001-of-0000N.gguf as llama.cpp's gguf-split does")
    s.add_argument("--split-max-tensors", type=int, metavar="N", help="write shards of at most N tensors each")
    s.add_argument("--dry-run", action="store_true", help="print the per-tensor plan and size only")
    s.add_argument("-t", "--threads", type=int, default=None)
    s.set_defaults(func=run)


def recipe_for_budget(args, src, im) -> tuple[dict[str, str], str]:
    """Measure (or reuse) the sensitivity table, allocate under the budget, write the recipe."""
    from lowbit.quant.quantize_model import check_imatrix, check_requantize
    from lowbit.quant.recipes import is_quantizable
    from lowbit.quant.types import by_name

    from ..cluster import connected
    from ..dynamic import budget_label, plan_for_budget

    if im is None or not args.calib:
        raise UsageError("--target-bpw and --target-size need --imatrix FILE and --calib TEXT "
                         "(the calibration text on which each tensor's sensitivity is measured)")
    if args.sensitivity_tokens < 16:
        raise UsageError(f"--sensitivity-tokens must be at least 16, not {args.sensitivity_tokens}")
    recipe_path = Path(args.write_recipe or args.output + ".recipe")
    check_output_dir(recipe_path, "recipe")
    names = [n for n, t in src.tensors.items() if is_quantizable(n, t.shape)]
    check_imatrix(src, names, im)
    # any tensor may change type under a budget: refuse before the minutes of measurement
    check_requantize(src, names, args.allow_requantize)
    candidates = None
    if args.candidates:
        candidates = [by_name(t.strip()).name for t in args.candidates.split(",") if t.strip()]
    bar = Progress("sensitivity", unit="steps")

    def step(text):
        bar.set_postfix_str(text)
        bar.update(1)

    calib = read_text(args.calib)
    with connected(args.cluster) as cluster:
        table, alloc = plan_for_budget(src, im, args.imatrix, calib, args.sensitivity_tokens,
                                       recipe_path, args.target_bpw, args.target_size, candidates, step, cluster,
                                       mode=args.sensitivity)
    bar.close()
    rc = table.rank_correlation
    print(f"sensitivity: {len(table.tensors)} tensors, {table.sample_tokens} tokens, {table.seconds:.0f} s; "
          f"held-out Spearman: error alone {rc.get('error_alone', float('nan')):.3f}, x kind gain "
          f"{rc.get('error_times_kind_gain', float('nan')):.3f}, x the {table.mode} gains used "
          f"{rc.get('error_times_tensor_gain', float('nan')):.3f} ({rc.get('pairs', 0)} pairs)")
    print(f"wrote the recipe {recipe_path}: predicted KLD {alloc.predicted_kld:.4g}")
    return alloc.types, budget_label(args.target_bpw, args.target_size)


def calibrated_pass(args, src, opts, im, work: Path) -> dict[str, Path]:
    """Run the layer pass (--gptq/--awq) into work; the encoded tensors, and one line per scale
    group and per matrix saying what was kept."""
    from lowbit.quant.quantize_model import check_plan, make_plan

    from ..layer_pass import layer_pass
    from ..loading import load_model

    opts.has_imatrix = im is not None
    choices = make_plan(src, opts)
    check_plan(src, choices, opts, im, args.allow_requantize)    # refuse before the long part
    model, tok = load_model(src.path)
    methods = " and ".join(m for m, on in (("error feedback", args.gptq), ("activation-aware scales", args.awq)) if on)
    bar = Progress(f"{methods}, layer by layer", total=model.cfg.n_layer, unit="layers")
    done = set()

    def stage(layer, what):
        if layer not in done:
            done.add(layer)
            bar.update(1)

    files, reports, scale_reports = layer_pass(
        model, tok, src, {c.name: c.qtype for c in choices}, read_text(args.calib), 512, args.calib_chunks,
        args.held_out_chunks, work, im, stage=stage, gptq=args.gptq, awq_scales=args.awq)
    bar.close()
    for r in scale_reports:
        if r.alpha:
            what = f"scaled, alpha {r.alpha:.1f}, held-out error {r.held_out_ratio:.3f} of unscaled"
        else:
            what = "not scaled" + (f" ({r.note})" if r.note else "")
        print(f"blk.{r.layer}: {r.matrices}: {what}")
    for r in reports if args.gptq else []:
        print(f"{r.name}: {r.qtype}, " + (f"error feedback kept, held-out error {r.ratio:.3f} of without"
                                           if r.kept == "gptq" else "encoded without error feedback"))
    return files


def overrides_from(specs: list[str] | None) -> list[tuple[str, str]]:
    """--tensor-type REGEX=TYPE, in the order given."""
    overrides = []
    for spec in specs or []:
        if "=" not in spec:
            raise UsageError(f"--tensor-type takes REGEX=TYPE, not {spec!r}")
        rx, t = spec.rsplit("=", 1)
        overrides.append((rx, t))
    return overrides


def split_rule(args):
    """--split-max-size / --split-max-tensors as a SplitRule, or None for one file."""
    from lowbit.quant.writer import SplitRule, parse_size

    if args.split_max_size is None and args.split_max_tensors is None:
        return None
    try:
        size = parse_size(args.split_max_size) if args.split_max_size is not None else None
        return SplitRule(size, args.split_max_tensors)
    except ValueError as e:
        raise UsageError(f"--split-max-size/--split-max-tensors: {e}") from None


def run(args) -> int:
    from lowbit.quant import imatrix as imx
    from lowbit.quant.allocate import read_recipe
    from lowbit.quant.gguffile import open_gguf
    from lowbit.quant.quantize_model import quantize_model
    from lowbit.quant.recipes import PlanOptions

    from ..model_store import resolve_model

    set_threads(args.threads)
    split = split_rule(args)
    src = open_gguf(resolve_model(args.input))
    if not args.dry_run:
        out = Path(args.output)
        check_output_dir(out, "output")
        if out.resolve() == src.path.resolve():
            raise UsageError("the output would overwrite the input")
    overrides = overrides_from(args.tensor_type)
    modes = [args.type is not None, args.target_bpw is not None or args.target_size is not None,
             args.recipe is not None]
    if sum(modes) != 1:
        raise UsageError("give one of TYPE, --target-bpw/--target-size (with --imatrix and --calib) or --recipe")
    if args.cluster and not modes[1]:
        raise UsageError("--cluster goes with --target-bpw or --target-size (it runs the sensitivity measurement)")
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
                         else recipe_for_budget(args, src, im))
        opts = PlanOptions(None, recipe=recipe)
    if (args.gptq or args.awq) and not args.calib:
        raise UsageError("--gptq and --awq need --calib TEXT: the calibration activations come from it")
    total = sum(t.n_elements for t in src.tensors.values())
    with pass_work_dir(Path(args.output), (args.gptq or args.awq) and not args.dry_run) as work:
        encoded = None
        if work is not None:
            encoded = calibrated_pass(args, src, opts, im, work)
        bar = Progress(f"quantize {label}", total=total, unit="weights", disable=args.dry_run)
        summary = quantize_model(src, args.output, opts, im, args.allow_requantize, args.dry_run,
                                 args.imatrix, progress=bar.update, split=split, encoded=encoded)
        bar.close()
    if args.dry_run:
        for c in summary.choices:
            t = src.tensors[c.name]
            shape = " x ".join(map(str, t.shape))
            print(f"{c.name:<32} {shape:>14}  {t.qtype.name:>7} -> {c.qtype.name:<8} {c.reason}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.type_counts.items(), key=lambda kv: -kv[1]))
    size = summary.file_bytes or summary.n_bytes
    shards = f" in {len(summary.paths)} shards" if len(summary.paths) > 1 else ""
    print(f"{'plan' if args.dry_run else 'wrote ' + str(summary.paths[0])}: {size / 2**20:.2f} MiB{shards}, "
          f"{summary.bpw:.3f} bits per weight over {summary.n_params:,} weights ({counts}); "
          f"{summary.seconds:.1f} s")
    return 0
