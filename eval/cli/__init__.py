"""The `lowbit` command: one entry point, subcommands named after llama.cpp's tools.

Each command is a module of this package with `add_parser(sub)` (its flags) and `run(args)`;
what they share (threads, texts, progress) lives in the library modules of `lowbit.eval`, so
the ladder and the Python API make the same checks with the same words.
"""
from __future__ import annotations

import argparse
import sys

from lowbit.quant.gguffile import GGUFError

from . import bench, chat, generate, imatrix, inspect, ladder, models, perplexity, quantize
from .common import UsageError

COMMANDS = (inspect, perplexity, generate, chat, imatrix, quantize, bench, ladder, models)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
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


__all__ = ["main", "build_parser", "UsageError"]
