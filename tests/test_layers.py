"""The import direction holds: quant <- runtime <- eval, never the other way."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAY_NOT_IMPORT = {"quant": ("lowbit.runtime", "lowbit.eval"), "runtime": ("lowbit.eval",)}


def imported_modules(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("layer", sorted(MAY_NOT_IMPORT))
def test_lower_layers_do_not_import_upper_ones(layer):
    offenders = [f"{p.relative_to(ROOT)} imports {m}"
                 for p in sorted((ROOT / layer).rglob("*.py"))
                 for m in imported_modules(p)
                 if m.startswith(MAY_NOT_IMPORT[layer])]
    assert not offenders, offenders
