"""The `lowbit` command: one entry point, subcommands named after llama.cpp's tools."""
from __future__ import annotations

import argparse
import json
import sys

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="architecture, tokenizer and per-type sizes of a GGUF file")
    s.add_argument("model", help="a GGUF file or a model name (see `lowbit models list`)")
    s.add_argument("--tensors", action="store_true", help="also list every tensor")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_inspect)

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
