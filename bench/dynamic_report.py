"""lowbit's per-tensor allocation against the presets, from ladder results.

    python bench/dynamic_report.py LADDER_DIR [LADDER_DIR ...] > docs/dynamic.md

For every allocated mix of a ladder (`lowbit ladder --allocate B`, and `--allocate-without-source-types
B`: the mix that may not take the source file's own quantized types): its file size, mean KLD and
PPL, and the presets (either quantizer, with or without importance matrix) of the same size: files
at least as large as the mix and at most SLACK above the budget B (the allocator may come in well
under B when no candidate type lets it spend the rest usefully); the best of them by mean KLD, and
the KLD reduction against it. Presets whose main type is one of the source's own quantized types
(a Q4_K_M of a Q4_K_M source) are not counted: they copy most of the source exactly, which says
nothing about how well anything quantizes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lowbit.eval.report import LOWBIT, MiB, alloc_budget, is_allocated, ok_entries, quantizer, without_source

SLACK = 0.03          # "the same size": presets up to 3 % above the budget (bits per weight)


def source_types(ladder_dir: Path, data: dict) -> set[str] | None:
    """The quantized types of the ladder's source file, None if the file is not here."""
    from lowbit.eval.dynamic import source_types as types_of
    from lowbit.eval.model_store import KNOWN_MODELS, cached_path
    from lowbit.quant.gguffile import open_gguf

    stored = data["settings"]["model"]
    path = cached_path(stored) if stored in KNOWN_MODELS else ladder_dir / stored
    return types_of(open_gguf(path)) if path.exists() else None


def label(e: dict) -> str:
    by = "" if quantizer(e) == LOWBIT else f" by {quantizer(e)}"
    return f"{e['type']}{'' if e['imatrix'] else ' (no imatrix)'}{by}"


def rows_for(ladder_dir: Path) -> tuple[str, list[str], set[str] | None]:
    from lowbit.quant.recipes import resolve_target

    data = json.loads((ladder_dir / "results.json").read_text())
    ok = ok_entries(data)
    own = source_types(ladder_dir, data)
    mixes = sorted((e for e in ok if is_allocated(e)), key=lambda e: (without_source(e["type"]), e["bpw"]))
    presets = [e for e in ok if not is_allocated(e) and resolve_target(e["type"])[0].default not in (own or ())]
    out = []
    for m in mixes:
        budget = alloc_budget(m["type"])
        peers = [p for p in presets if p["file_bytes"] >= m["file_bytes"] and p["bpw"] <= (1 + SLACK) * budget]
        best = min(peers, key=lambda p: p["kld"]["mean"]) if peers else None
        peer_text = ", ".join(f"{label(p)} {p['kld']['mean']:.4f}"
                              for p in sorted(peers, key=lambda p: p["file_bytes"])) or "none"
        gain = f"{100 * (1 - m['kld']['mean'] / best['kld']['mean']):.0f} %" if best else ""
        nearest = " / ".join(
            f"{what} {label(p)}: {p['file_bytes'] / MiB:.2f} MiB, KLD {p['kld']['mean']:.4f}"
            for what, p in (("next larger", min((p for p in presets if p["file_bytes"] >= m["file_bytes"]),
                                                  key=lambda p: p["file_bytes"], default=None)),
                            ("next smaller", max((p for p in presets if p["file_bytes"] < m["file_bytes"]),
                                                   key=lambda p: p["file_bytes"], default=None)))
            if p is not None)
        none_text = f"no preset of this size ({nearest})"
        variant = "without the source's types" if without_source(m["type"]) else "all types"
        out.append(f"| {budget:g} | {variant} | {m['bpw']:.3f} | {m['file_bytes'] / MiB:.2f} | {m['kld']['mean']:.4f} "
                   f"+/- {m['kld']['stderr']:.4f} | {m['ppl']:.4f} | "
                   + (f"{label(best)}: {best['file_bytes'] / MiB:.2f} MiB, "
                      f"KLD {best['kld']['mean']:.4f}, PPL {best['ppl']:.4f}" if best else none_text)
                   + f" | {gain} | {peer_text} |")
    model = Path(data["settings"]["model"]).name
    return model, out, own


def main(argv: list[str]) -> int:
    dirs = [Path(d) for d in argv]
    missing = [d for d in dirs if not (d / "results.json").is_file()]
    if not dirs or missing:
        print(__doc__.strip() if not dirs else f"{missing[0]} has no results.json: not a ladder output directory.",
              file=sys.stderr)
        return 1
    for d in dirs:
        model, rows, own = rows_for(Path(d))
        print(f"## {model}\n")
        print(f"Presets counted as the same size: files at least as large as the mix, at most {100 * SLACK:.0f} % "
              "above the budget in bits per weight"
              + (f"; not those whose main type is one of the source's own ({', '.join(sorted(own))})" if own else
                 " (the source file is not here: presets of every type counted)") + ".\n")
        print("| target bpw | candidates | bpw | MiB | mean KLD | PPL | best preset of the same size | KLD lower by "
              "| presets of that size (mean KLD) |")
        print("|---:|---|---:|---:|---:|---:|---|---:|---|")
        print("\n".join(rows))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
