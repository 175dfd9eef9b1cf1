"""`lowbit chat`: an interactive multi-turn chat with the model's own template."""
from __future__ import annotations

import sys

from ..machine import set_threads
from ..loading import load_model
from .common import Stopwatch, add_precision_args, report_load, sentence
from .generate import add_sampling_args, sampler_from


def chat_hints():
    from lowbit.runtime.config import ContextFullError
    return ((ContextFullError, "start a new chat (/clear) or raise -c"),)


def add_parser(sub) -> None:
    s = sub.add_parser("chat", help="interactive multi-turn chat with the model's template")
    s.add_argument("model")
    s.add_argument("-s", "--system", default=None, help="system prompt")
    add_sampling_args(s)
    add_precision_args(s, "fast")
    s.set_defaults(func=run)


def run(args) -> int:
    from lowbit.runtime.chat import ChatSession
    from lowbit.runtime.config import ModelError

    set_threads(args.threads)
    watch = Stopwatch()
    model, tokenizer = load_model(args.model, args.precision)
    report_load(model, args.precision, watch)
    session = ChatSession(model, tokenizer, args.ctx_size, sampler_from(args), args.system)
    print(f"lowbit chat with {model.gguf.path.name} ({model.cfg.arch_name}); /exit quits, /clear "
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
            print(f"\n[{sentence(e, chat_hints())}]", file=sys.stderr)
            continue
        n = session.stats.generated_tokens - before[0]
        secs = session.stats.generate_seconds - before[1]
        if n and secs:
            print(f"[{n} tokens, {n / secs:.1f} tokens/s]", file=sys.stderr)
