"""`lowbit inspect`: architecture, tokenizer and per-type sizes of a GGUF file."""
from __future__ import annotations

import json

from lowbit.quant.gguffile import open_gguf


def add_parser(sub) -> None:
    s = sub.add_parser("inspect", help="architecture, tokenizer and per-type sizes of a GGUF file")
    s.add_argument("model", help="a GGUF file or a model name (see `lowbit models list`)")
    s.add_argument("--tensors", action="store_true", help="also list every tensor")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..inspect_model import format_report, report
    from ..model_store import resolve_model

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
