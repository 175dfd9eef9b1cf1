"""lowbit's per-tensor allocation against llama.cpp's presets, from ladder results.

    python bench/dynamic_report.py LADDER_DIR [LADDER_DIR ...] > docs/dynamic.md

For every allocated mix (`lowbit ladder --allocate B`) of a ladder: its file size, mean KLD and
PPL, and the presets (with or without importance matrix) of the same size: files at least as
large as the mix and at most SLACK above the budget B (the allocator may come in well under B
when no candidate type lets it spend the rest usefully); the best of them by mean KLD, and the
KLD reduction against it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lowbit.eval.report import MiB, alloc_budget, is_allocated, ok_entries

SLACK = 0.03          # "the same size": presets up to 3 % above the budget (bits per weight)


def rows_for(ladder_dir: Path) -> tuple[str, list[str]]:
    data = json.loads((ladder_dir / "results.json").read_text())
    ok = ok_entries(data)
    mixes = sorted((e for e in ok if is_allocated(e)), key=lambda e: e["bpw"])
    presets = [e for e in ok if not is_allocated(e)]
    smallest = min(presets, key=lambda p: p["file_bytes"])
    smallest_text = (f"no preset is this small (the smallest, {smallest['type']}: "
                     f"{smallest['file_bytes'] / MiB:.2f} MiB, KLD {smallest['kld']['mean']:.4f})")
    out = []
    for m in mixes:
        budget = alloc_budget(m["type"])
        peers = [p for p in presets if p["file_bytes"] >= m["file_bytes"] and p["bpw"] <= (1 + SLACK) * budget]
        best = min(peers, key=lambda p: p["kld"]["mean"]) if peers else None
        peer_text = ", ".join(f"{p['type']}{'' if p['imatrix'] else ' (no imatrix)'} {p['kld']['mean']:.4f}"
                              for p in sorted(peers, key=lambda p: p["file_bytes"])) or "none"
        gain = f"{100 * (1 - m['kld']['mean'] / best['kld']['mean']):.0f} %" if best else ""
        out.append(f"| {budget:g} | {m['bpw']:.3f} | {m['file_bytes'] / MiB:.2f} | {m['kld']['mean']:.4f} "
                   f"+/- {m['kld']['stderr']:.4f} | {m['ppl']:.4f} | "
                   + (f"{best['type']}{'' if best['imatrix'] else ' (no imatrix)'}: {best['file_bytes'] / MiB:.2f} MiB, "
                      f"KLD {best['kld']['mean']:.4f}, PPL {best['ppl']:.4f}" if best else smallest_text)
                   + f" | {gain} | {peer_text} |")
    model = Path(data["settings"]["model"]).name
    return model, out


def main(argv: list[str]) -> int:
    dirs = [Path(d) for d in argv]
    missing = [d for d in dirs if not (d / "results.json").is_file()]
    if not dirs or missing:
        print(__doc__.strip() if not dirs else f"{missing[0]} has no results.json: not a ladder output directory.",
              file=sys.stderr)
        return 1
    for d in dirs:
        model, rows = rows_for(Path(d))
        print(f"## {model}\n")
        print(f"Presets counted as the same size: files at least as large as the mix, at most {100 * SLACK:.0f} % "
              "above the budget in bits per weight.\n")
        print("| target bpw | bpw | MiB | mean KLD | PPL | best preset of the same size | KLD lower by | presets of that size (mean KLD) |")
        print("|---:|---:|---:|---:|---:|---|---:|---|")
        print("\n".join(rows))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
