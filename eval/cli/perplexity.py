"""`lowbit perplexity`: perplexity of a text as llama-perplexity computes it, and KL-divergence."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..loading import load_model, read_text
from ..machine import set_threads
from ..progress import Progress
from .common import PRECISION_NOTE, UsageError, add_precision_args


def add_parser(sub) -> None:
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
    s.set_defaults(func=run)


def run(args) -> int:
    from ..kld import KLDStats, compare_to_base, write_base
    from ..perplexity import perplexity

    set_threads(args.threads)
    if args.kl_divergence and not args.kl_divergence_base:
        raise UsageError("--kl-divergence needs --kl-divergence-base FILE (made by a run without --kl-divergence)")
    text = read_text(args.file)
    model, tokenizer = load_model(args.model, args.precision)
    bar = Progress("perplexity", unit="chunks", disable=args.json)

    def progress(i, n, ppl):
        bar.total = n
        bar.set_postfix_str(f"PPL {ppl:.4f}")
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
