"""Per-tensor bit allocation under a size budget, and the recipe files that record a plan.

Each quantizable tensor has candidate types, each with its size in bytes and a predicted cost
(how much the model's output distribution suffers when that tensor alone takes that type, in
KL-divergence). Costs are taken as additive across tensors, so the best plan for a budget is a
multiple-choice knapsack. It is solved the way rate-distortion allocators are: drop each
tensor's dominated candidates (bigger and no better), keep the lower convex hull of
(bytes, cost), start every tensor at its smallest candidate and repeatedly take the upgrade with
the largest cost saved per byte that still fits; then spend what is left on any single upgrade
that fits (the hull can skip a point that a small remaining budget could still afford).
"""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import LowbitError


class AllocationError(LowbitError):
    """A budget the types cannot meet, or a recipe file that cannot be read."""


@dataclass(frozen=True)
class Candidate:
    type: str
    n_bytes: int
    cost: float


def lower_hull(cands: list[Candidate]) -> list[Candidate]:
    """The candidates on the lower convex hull of (bytes, cost), by increasing size."""
    pts = []
    for c in sorted(cands, key=lambda c: (c.n_bytes, c.cost)):
        if pts and c.cost >= pts[-1].cost:
            continue  # no better than something smaller (or as small)
        while len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            # b lies on or above the segment a-c: it is never the best use of the bytes
            if (b.cost - a.cost) * (c.n_bytes - a.n_bytes) >= (c.cost - a.cost) * (b.n_bytes - a.n_bytes):
                pts.pop()
            else:
                break
        pts.append(c)
    return pts


def allocate(candidates: dict[str, list[Candidate]], budget_bytes: int) -> dict[str, Candidate]:
    """The candidate for each tensor that minimises the summed cost within budget_bytes."""
    hulls = {name: lower_hull(c) for name, c in candidates.items() if c}
    missing = [name for name in candidates if name not in hulls]
    if missing:
        raise AllocationError(f"no candidate type for {missing[0]}")
    pick = {name: 0 for name in hulls}
    used = sum(h[0].n_bytes for h in hulls.values())
    if used > budget_bytes:
        raise AllocationError(f"the budget of {budget_bytes:,} bytes is below the {used:,} bytes that the "
                              f"smallest candidate types take")

    def push(heap, name):
        h, i = hulls[name], pick[name]
        if i + 1 < len(h):
            gain = (h[i].cost - h[i + 1].cost) / max(1, h[i + 1].n_bytes - h[i].n_bytes)
            heapq.heappush(heap, (-gain, name, i))

    heap = []
    for name in hulls:
        push(heap, name)
    while heap:
        _, name, i = heapq.heappop(heap)
        if pick[name] != i:
            continue
        h = hulls[name]
        extra = h[i + 1].n_bytes - h[i].n_bytes
        if used + extra > budget_bytes:
            continue  # this tensor cannot take its next step; others with smaller steps may
        used += extra
        pick[name] = i + 1
        push(heap, name)
    chosen = {name: hulls[name][i] for name, i in pick.items()}
    return _spend_the_rest(candidates, chosen, budget_bytes - used)


def _spend_the_rest(candidates, chosen, left: int) -> dict[str, Candidate]:
    while True:
        best, best_gain = None, 0.0
        for name, cur in chosen.items():
            for c in candidates[name]:
                extra = c.n_bytes - cur.n_bytes
                if extra <= left and cur.cost - c.cost > best_gain:
                    best, best_gain = (name, c), cur.cost - c.cost
        if best is None:
            return chosen
        name, c = best
        left -= c.n_bytes - chosen[name].n_bytes
        chosen[name] = c


# --- recipe files -----------------------------------------------------------------------------
#
#   # lowbit recipe ...            comment lines: what made it
#   token_embd.weight   Q4_0       # 13.5 MiB, predicted KLD +0.01234
#
# One tensor per line: its name, then its type; anything after '#' is a comment.

LINE = re.compile(r"^\s*(\S+)\s+(\S+)\s*(?:#.*)?$")


def write_recipe(path: str | Path, rows: list[tuple[str, str, str]], header: list[str]) -> None:
    """rows: (tensor, type, comment). Written whole to a temporary name, then renamed."""
    path = Path(path)
    width = max((len(r[0]) for r in rows), default=0)
    text = "".join(f"# {h}\n" for h in header)
    text += "".join(f"{name:<{width}}  {t:<8}" + (f"  # {c}" if c else "") + "\n" for name, t, c in rows)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def read_recipe(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise AllocationError(f"recipe file {path} does not exist")
    plan = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            raise AllocationError(f"{path.name} line {n} is not 'TENSOR TYPE [# comment]': {line.strip()!r}")
        name, qtype = m.groups()
        if name in plan:
            raise AllocationError(f"{path.name} names {name} twice (line {n})")
        plan[name] = qtype
    if not plan:
        raise AllocationError(f"recipe file {path} names no tensor")
    return plan
