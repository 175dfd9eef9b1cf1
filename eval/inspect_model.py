"""`lowbit inspect`: what a GGUF file holds, per type and in total."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from lowbit.quant.gguffile import GGUFFile


def type_summary(gguf: GGUFFile) -> list[dict]:
    rows: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0})
    for t in gguf.tensors.values():
        r = rows[t.qtype.name]
        r["type"] = t.qtype.name
        r["tensors"] += 1
        r["parameters"] += t.n_elements
        r["bytes"] += t.n_bytes
    out = sorted(rows.values(), key=lambda r: -r["bytes"])
    for r in out:
        r["bpw"] = 8.0 * r["bytes"] / r["parameters"] if r["parameters"] else 0.0
    return out


def _describe_value(value) -> str:
    if isinstance(value, np.ndarray):
        return f"[{value.dtype} x {value.size}]" if value.size > 8 else str(value.tolist())
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 8 else repr(value)
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value) if isinstance(value, str) else str(value)


def hyperparameters(gguf: GGUFFile) -> dict[str, object]:
    prefix = gguf.architecture + "."
    return {k[len(prefix):]: v for k, v in gguf.metadata.items() if k.startswith(prefix)}


def _count(value) -> int | str:
    """How many items a list-like metadata value holds (0 if absent, '?' if it is not a list:
    inspect shows a damaged file as it is; running it refuses it)."""
    if value is None:
        return 0
    return len(value) if isinstance(value, (list, np.ndarray)) else "?"


def tokenizer_summary(gguf: GGUFFile) -> dict[str, object]:
    md = gguf.metadata
    return {
        "model": md.get("tokenizer.ggml.model", "none"),
        "pre": md.get("tokenizer.ggml.pre"),
        "tokens": _count(md.get("tokenizer.ggml.tokens")),
        "merges": _count(md.get("tokenizer.ggml.merges")),
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "add_bos_token": md.get("tokenizer.ggml.add_bos_token"),
        "chat_template": "tokenizer.chat_template" in md,
    }


def report(gguf: GGUFFile) -> dict:
    types = type_summary(gguf)
    params = sum(r["parameters"] for r in types)
    n_bytes = sum(r["bytes"] for r in types)
    return {
        "path": str(gguf.path),
        "file_bytes": gguf.file_bytes,
        "shards": len(gguf.shards),
        "gguf_version": gguf.version,
        "architecture": gguf.architecture,
        "name": gguf.metadata.get("general.name"),
        "file_type": gguf.metadata.get("general.file_type"),
        "hyperparameters": {k: _describe_value(v) for k, v in hyperparameters(gguf).items()},
        "tokenizer": tokenizer_summary(gguf),
        "types": types,
        "tensors": len(gguf.tensors),
        "parameters": params,
        "tensor_bytes": n_bytes,
        "bpw": 8.0 * n_bytes / params if params else 0.0,
    }


def format_report(rep: dict, gguf: GGUFFile, with_tensors: bool) -> str:
    lines = [
        f"file:          {rep['path']} ({rep['file_bytes'] / 2**20:.1f} MiB"
        + (f" in {rep['shards']} shards" if rep["shards"] > 1 else "") + f", GGUF v{rep['gguf_version']})",
        f"architecture:  {rep['architecture']}" + (f" ({rep['name']})" if rep["name"] else ""),
    ]
    for k, v in rep["hyperparameters"].items():
        lines.append(f"  {k:<34} {v}")
    tok = rep["tokenizer"]
    pre = f", pre-tokenizer {tok['pre']}" if tok["pre"] else ""
    lines.append(f"tokenizer:     {tok['model']}{pre}, {tok['tokens']} tokens"
                 + (f", {tok['merges']} merges" if tok["merges"] else "")
                 + f", bos {tok['bos_token_id']}, eos {tok['eos_token_id']}"
                 + f", add_bos {tok['add_bos_token']}, chat template {'yes' if tok['chat_template'] else 'no'}")
    lines.append("")
    lines.append(f"| {'type':<8} | {'tensors':>7} | {'parameters':>12} | {'bytes':>12} | {'bpw':>6} |")
    lines.append(f"|{'-' * 10}|{'-' * 8}:|{'-' * 13}:|{'-' * 13}:|{'-' * 7}:|")
    for r in rep["types"]:
        lines.append(f"| {r['type']:<8} | {r['tensors']:>7} | {r['parameters']:>12,} | {r['bytes']:>12,} "
                     f"| {r['bpw']:>6.3f} |")
    lines.append(f"| {'total':<8} | {rep['tensors']:>7} | {rep['parameters']:>12,} | {rep['tensor_bytes']:>12,} "
                 f"| {rep['bpw']:>6.3f} |")
    if with_tensors:
        lines.append("")
        width = max(len(n) for n in gguf.tensors) if gguf.tensors else 4
        for t in gguf.tensors.values():
            shape = " x ".join(str(d) for d in t.shape)
            lines.append(f"{t.name:<{width}}  {shape:>14}  {t.qtype.name:<8} {t.n_bytes:>12,} B")
    return "\n".join(lines)
