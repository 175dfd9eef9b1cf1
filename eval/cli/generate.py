"""`lowbit generate`: continue a prompt, streaming the tokens; the sampling flags it shares with chat."""
from __future__ import annotations

import sys

from ..machine import set_threads
from ..loading import load_model
from .common import PRECISION_NOTE, Stopwatch, UsageError, add_precision_args, report_load


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


def sampler_from(args):
    from lowbit.runtime.sampling import Sampler, SamplerSettings
    return Sampler(SamplerSettings(temp=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                   repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                                   seed=args.seed))


def add_parser(sub) -> None:
    s = sub.add_parser("generate", help="continue a prompt, streaming the tokens")
    s.add_argument("model")
    s.add_argument("-p", "--prompt", required=True)
    s.add_argument("--special", action="store_true", help="parse special tokens in the prompt")
    s.add_argument("--no-echo", action="store_true", help="do not print the prompt")
    add_sampling_args(s)
    add_precision_args(s, "fast")
    s.set_defaults(func=run, n_predict=128)


def run(args) -> int:
    from lowbit.runtime.generate import GenerationStats, TextStream, check_prompt, generate_tokens

    set_threads(args.threads)
    if not args.prompt:
        raise UsageError("the prompt is empty: give one with -p")
    watch = Stopwatch()
    model, tokenizer = load_model(args.model, args.precision)
    ids = tokenizer.encode(args.prompt, add_special=True, parse_special=args.special)
    check_prompt(0, len(ids), args.ctx_size)
    report_load(model, args.precision, watch)
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
