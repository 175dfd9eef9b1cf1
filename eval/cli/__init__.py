"""The `lowbit` command: one entry point, subcommands named after llama.cpp's tools.

Each command is a module of this package with `add_parser(sub)` (its flags) and `run(args)`;
what they share (threads, texts, progress) lives in the library modules of `lowbit.eval`, so
the ladder and the Python API make the same checks with the same words.
"""
from __future__ import annotations

import argparse
import os
import sys

from lowbit.quant.errors import LowbitError

from . import bench, chat, generate, imatrix, inspect, ladder, models, perplexity, quantize
from .common import Terminated, UsageError, is_environment_error, on_signals_unwind, sentence

COMMANDS = (inspect, perplexity, generate, chat, imatrix, quantize, bench, ladder, models)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (a LowbitError) is one sentence on stderr and exit status 1;
    anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    on_signals_unwind()
    prefix = f"lowbit {args.command}"
    try:
        return args.func(args)
    except LowbitError as e:
        print(f"{prefix}: error: {sentence(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        if isinstance(e, BrokenPipeError):          # `lowbit inspect ... | head`: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush
            return 0
        if not is_environment_error(e):
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"{prefix}: error: {e.strerror}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prefix}: terminated", file=sys.stderr)
        return 128 + 15


__all__ = ["main", "build_parser", "UsageError"]
