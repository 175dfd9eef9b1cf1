"""Dynamic quantization: a type per tensor from the sensitivity table, under a size budget.

The budget is given as bits per weight (over every tensor of the file, as `lowbit quantize`
reports it) or as a file size in bytes; tensors that are not weight matrices stay F32 and count
against it. The plan is written as a recipe file (quant/allocate.py) that `--recipe` applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lowbit.quant.allocate import AllocationError, Candidate, allocate, write_recipe
from lowbit.quant.gguffile import GGUFFile
from lowbit.quant.imatrix import ImportanceMatrix
from lowbit.quant.quantize_model import needs_importance
from lowbit.quant.recipes import is_quantizable

from .report import MiB
from .sensitivity import SensitivityTable, load_or_build


@dataclass
class Allocation:
    types: dict[str, str]            # tensor -> type, every quantizable tensor
    predicted: dict[str, float]      # tensor -> predicted KLD of its choice
    tensor_bytes: int                # all tensors, the F32 ones included
    n_params: int

    @property
    def bpw(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_params

    @property
    def predicted_kld(self) -> float:
        return sum(self.predicted.values())


def fixed_bytes(src: GGUFFile) -> tuple[int, int]:
    """Bytes and parameters of the tensors that stay F32, and the parameters of all tensors."""
    fixed = sum(4 * t.n_elements for n, t in src.tensors.items() if not is_quantizable(n, t.shape))
    return fixed, sum(t.n_elements for t in src.tensors.values())


def budget_from(src: GGUFFile, target_bpw: float | None, target_size: int | None) -> int:
    """The bytes the quantizable tensors may take."""
    fixed, n_params = fixed_bytes(src)
    if target_bpw is not None:
        if not 0 < target_bpw <= 32:
            raise AllocationError(f"--target-bpw must be between 0 and 32, not {target_bpw}")
        return int(target_bpw * n_params / 8) - fixed
    overhead = src.file_bytes - sum(t.n_bytes for t in src.tensors.values())  # metadata
    return int(target_size) - overhead - fixed


def source_types(src: GGUFFile) -> set[str]:
    """The quantized types the source's weight matrices have: a mix may take them to reproduce
    a tensor exactly, a gain an unquantized source would not see."""
    return {t.qtype.name for n, t in src.tensors.items()
            if is_quantizable(n, t.shape) and t.qtype.block_size > 1}


def allocate_for_budget(src: GGUFFile, table: SensitivityTable, budget: int,
                        exclude: frozenset[str] = frozenset(), im: ImportanceMatrix | None = None) -> Allocation:
    """The plan under the budget, among the table's candidates but those in `exclude` and, for a
    tensor the importance matrix `im` has no entry for (the token embedding), those llama.cpp
    will not make without one."""
    def allowed(name: str, q: str) -> bool:
        return q not in exclude and not (needs_importance(name, q) and (im is None or im.importance(name) is None))

    cands = {tc.name: [Candidate(q, tc.bytes[q], tc.predicted(q)) for q in tc.error if allowed(tc.name, q)]
             for tc in table.tensors}
    if not all(cands.values()):
        bare = next(n for n, c in cands.items() if not c)
        left_out = f"{', '.join(sorted(exclude))} and " if exclude else ""
        raise AllocationError(f"no candidate type is left for {bare} without {left_out}the types that "
                              "need an importance matrix entry for it")
    fixed, n_params = fixed_bytes(src)
    try:
        chosen = allocate(cands, budget)
    except AllocationError:
        smallest = sum(min(c.n_bytes for c in cs) for cs in cands.values()) + fixed
        raise AllocationError(
            f"the budget is below what the smallest types allow: at least {8 * smallest / n_params:.3f} "
            f"bits per weight ({smallest / MiB:.2f} MiB of tensors)") from None
    used = sum(c.n_bytes for c in chosen.values()) + fixed
    return Allocation({n: c.type for n, c in chosen.items()}, {n: c.cost for n, c in chosen.items()},
                      used, n_params)


def recipe_rows(table: SensitivityTable, alloc: Allocation) -> list[tuple[str, str, str]]:
    rows = []
    for tc in table.tensors:
        t = alloc.types[tc.name]
        rows.append((tc.name, t, f"{tc.bytes[t] / MiB:7.3f} MiB, predicted KLD {tc.predicted(t):.3g}"))
    return rows


def recipe_header(src: GGUFFile, table: SensitivityTable, alloc: Allocation, what: str) -> list[str]:
    rc = table.rank_correlation
    return [f"lowbit recipe for {src.path.name}: {what}",
            f"{alloc.bpw:.4f} bits per weight, {alloc.tensor_bytes / MiB:.2f} MiB of tensors, "
            f"predicted KLD {alloc.predicted_kld:.4g} (the sum over tensors)",
            f"sensitivity ({table.mode} gains) from {table.sample_tokens} calibration tokens; held-out rank correlation "
            f"(Spearman, {rc.get('pairs', 0)} pairs) of the predicted cost: "
            f"{rc.get('error_times_tensor_gain', float('nan')):.3f}",
            "edit freely: one tensor per line, TENSOR TYPE; apply with lowbit quantize IN OUT --recipe FILE"]


def budget_label(target_bpw: float | None, target_size: int | None) -> str:
    return f"--target-bpw {target_bpw:g}" if target_bpw is not None else f"--target-size {target_size}"


def plan_for_budget(src: GGUFFile, im: ImportanceMatrix, im_path: str, calib_text: str, n_tokens: int,
                    recipe_path: Path, target_bpw: float | None = None, target_size: int | None = None,
                    candidates: list[str] | None = None,
                    progress: Callable[[str], None] = lambda s: None,
                    cluster=None, mode: str = "tensor",
                    exclude: frozenset[str] = frozenset()) -> tuple[SensitivityTable, Allocation]:
    """The whole pipeline behind --target-bpw/--target-size and `ladder --allocate`: the budget
    checked, the sensitivity table measured on the first n_tokens of calib_text (or read from
    the cache, without loading the model; on `cluster` when given: eval/cluster.py; `mode`:
    eval/sensitivity.py), the allocation among the candidates not in `exclude`, and its recipe
    written."""
    from lowbit.runtime.model import Model
    from lowbit.runtime.tokenizer import Tokenizer

    budget = budget_from(src, target_bpw, target_size)
    tokens = Tokenizer(src.metadata).encode(calib_text, add_special=True)
    if len(tokens) < n_tokens:
        raise AllocationError(f"the calibration text has {len(tokens)} tokens, fewer than the "
                              f"{n_tokens} the sensitivity measurement takes (--sensitivity-tokens)")
    sample = np.asarray(tokens[:n_tokens], dtype=np.int64)
    table = load_or_build(src, lambda: Model(src), im, im_path, sample, progress=progress,
                          candidates=candidates, cluster=cluster, mode=mode)
    alloc = allocate_for_budget(src, table, budget, exclude, im)
    what = budget_label(target_bpw, target_size)
    if exclude:
        what += f", without {', '.join(sorted(exclude))}"
    write_recipe(recipe_path, recipe_rows(table, alloc), recipe_header(src, table, alloc, what))
    return table, alloc
