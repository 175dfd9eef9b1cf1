"""A second evaluation text of another domain: Python source, read at run time from the
standard library of the Python that runs lowbit (never stored in the project).

An importance matrix and a per-tensor allocation chosen on WikiText and judged on WikiText can
fit it and nothing else; a code model (Qwen2.5-Coder) is better judged on code too. The sample
is fixed by name: the first SLICE_BYTES of each module below (cut at a line end), in this
order, each after a `# ---- module` line, so chunks from the start of the text cross many
modules (plain library code: parsers, containers, numerics, text handling), not one. Its exact
content follows the Python version, which the name records.
"""
from __future__ import annotations

import importlib.util
import sys

from lowbit.quant.errors import LowbitError

PYTHON_STDLIB = "python-stdlib"      # the name `--extra-text` knows
MODULES = ("textwrap", "heapq", "json.decoder", "fractions", "shlex", "bisect", "string",
           "statistics", "csv", "argparse", "dataclasses", "functools", "difflib", "calendar",
           "configparser", "pprint", "enum", "pathlib", "tokenize", "ipaddress")
SLICE_BYTES = 6000


class CodeTextError(LowbitError):
    """A module of the sample that this Python does not have as source."""


def module_source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise CodeTextError(f"this Python ({sys.version.split()[0]}) has no source for the module {name}")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def head(text: str, limit: int) -> str:
    """The text up to `limit` characters, cut after the last whole line."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[:cut + 1] if cut > 0 else text[:limit]


def python_stdlib_sample() -> str:
    return "".join(f"# ---- {name}\n{head(module_source(name), SLICE_BYTES)}\n" for name in MODULES)


def sample_name() -> str:
    return f"{PYTHON_STDLIB} (Python {sys.version.split()[0]}, {len(MODULES)} modules)"
