"""The ladder's report: a markdown table and two PNG plots, each captioned with what was measured
(model, text, chunks, threads, machine)."""
from __future__ import annotations

from pathlib import Path

MiB = 2 ** 20


def caption(data: dict, machine: str) -> str:
    s = data["settings"]
    chunks = data["base"]["chunks"] if data.get("base") else s["chunks"]
    sp = speed_settings(data)
    speed = (f"speed pp{sp['pp']}/tg{sp['tg']}, {sp['reps']} reps, {sp['threads']} threads"
             if sp else "speed not measured")
    return (f"{Path(s['model']).name} on {s['eval_text']}, -c {s['n_ctx']}, {chunks} chunks; "
            f"importance matrix {Path(s['imatrix']).name}; {speed}; {machine}")


def speed_settings(data: dict) -> dict | None:
    """The speed settings of the base measurement (the entries' are reported only if equal)."""
    return (data.get("base") or {}).get("speed", {}).get("settings")


def tps(e: dict, data: dict, key: str) -> float | None:
    sp = e.get("speed", {})
    return sp.get(key) if sp.get("settings") == speed_settings(data) else None


def _tps_cell(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def ok_entries(data: dict) -> list[dict]:
    rows = [e for e in data["entries"].values() if e["status"] == "ok"]
    return sorted(rows, key=lambda e: (-e["bpw"], not e["imatrix"]))


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (smaller x and smaller y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best_y = [], float("inf")
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


ALLOC = "alloc-"   # ladder entries that are lowbit's own mixes: "alloc-<budget>bpw"
NO_SOURCE = "-nosource"   # ... chosen without the source's own types: "alloc-<budget>bpw-nosource"


def alloc_name(bpw: float, without_source: bool = False) -> str:
    return f"{ALLOC}{bpw:g}bpw{NO_SOURCE if without_source else ''}"


def alloc_budget(type_name: str) -> float | None:
    """The bits-per-weight budget of a mix's entry name, None for a preset."""
    if not type_name.startswith(ALLOC):
        return None
    return float(type_name[len(ALLOC):].removesuffix(NO_SOURCE).removesuffix("bpw"))


def without_source(type_name: str) -> bool:
    """Whether a mix's entry name says it was chosen without the source's own types."""
    return type_name.startswith(ALLOC) and type_name.endswith(NO_SOURCE)


def is_allocated(e: dict) -> bool:
    return alloc_budget(e["type"]) is not None


LOWBIT = "lowbit"


def quantizer(e: dict) -> str:
    """Who made the entry's file (results written before llama-quantize entries: lowbit)."""
    return e.get("quantizer", LOWBIT)


def by_llama(e: dict) -> bool:
    return quantizer(e) != LOWBIT


def _name(e: dict) -> str:
    method = f" +{e['method']}" if e.get("method") else ""
    return e["type"] + method + (f" ({quantizer(e)})" if by_llama(e) else "")


def extra_kld(e: dict) -> float | None:
    """The entry's mean KLD on the second text, if measured."""
    return (e.get("extra") or {}).get("kld", {}).get("mean")


def _extra_cell(e: dict) -> str:
    v = extra_kld(e)
    return "" if v is None else f"{v:.5f}"


def _peak_cell(e: dict) -> str:
    return f"{e['quantize_peak_bytes'] / MiB:.0f}" if e.get("quantize_peak_bytes") else ""


def _type_bpw(e: dict) -> str:
    if is_allocated(e):
        return "per-tensor mix"
    if not e["type_share"]:
        return "none took it"
    return f"{e['type_bpw']:.3f} ({100 * e['type_share']:.0f} %)"


def markdown(data: dict, machine: str, plots: list[str] = ()) -> str:
    base = data["base"]
    lines = [f"# Quantization ladder: {Path(data['settings']['model']).name}", "",
             caption(data, machine), ""]
    if base:
        lines += [f"Base (the source file's exact weights): {base['file_bytes'] / MiB:.1f} MiB, "
                  f"PPL {base['ppl']:.4f} +/- {base['ppl_error']:.4f}"
                  + (f", pp {tps(base, data, 'pp_tps') or 0:.0f} t/s, tg {tps(base, data, 'tg_tps') or 0:.1f} t/s"
                     if speed_settings(data) else ""),
                  ""]
    extra = data.get("extra")
    if extra:
        eb = extra["base"]
        lines += [f"Second text: {extra['settings']['text']}, {eb['chunks']} chunks; the base's PPL there "
                  f"{eb['ppl']:.4f} +/- {eb['ppl_error']:.4f}. Its column: each entry's mean KLD on it.", ""]
    lines += [
        "bpw (file): bits per weight over all quantizable tensors; bpw (type): over the tensors that "
        "took the preset's own type, with their share of the weights (the rest are fallbacks, the "
        "embedding and the tensors the preset's rules favour). KLD against the base, mean +/- its "
        "standard error; same top: how often the most likely token agrees.", "",
        "| type | imatrix | MiB | bpw (file) | bpw (type, share) | quantize s | quantize peak MiB | PPL "
        "| PPL ratio | mean KLD | 99% KLD | same top | pp t/s | tg t/s |" + (" mean KLD, second text |" if extra else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
    for e in sorted(data["entries"].values(), key=lambda e: (-(e["bpw"] or 0), not e["imatrix"])):
        im = "yes" if e["imatrix"] else "no"
        if e["status"] != "ok":
            lines.append(f"| {_name(e)} | {im} | {e['status']} |  |  |  |  |  |  |  |  |  |  |  |"
                         + (" |" if extra else ""))
            continue
        k = e["kld"]
        lines.append(
            f"| {_name(e)} | {im} | {e['file_bytes'] / MiB:.1f} | {e['bpw']:.3f} "
            f"| {_type_bpw(e)} | {e['quantize_seconds']:.1f} | {_peak_cell(e)} "
            f"| {e['ppl']:.4f} | {k['ppl_ratio']:.4f} | {k['mean']:.5f} +/- {k['stderr']:.5f} "
            f"| {k['p99']:.4f} | {100 * k['same_top']:.2f} % | {_tps_cell(tps(e, data, 'pp_tps'), 0)} "
            f"| {_tps_cell(tps(e, data, 'tg_tps'), 1)} |" + (f" {_extra_cell(e)} |" if extra else ""))
    lines += head_to_head(data)
    for p in plots:
        lines += ["", f"![{Path(p).stem}]({Path(p).name})"]
    return "\n".join(lines) + "\n"


def head_to_head(data: dict) -> list[str]:
    """lowbit against llama-quantize at each preset both made (same source, importance matrix
    and threads): the lines of a markdown section, none without llama-quantize entries."""
    ok = [e for e in data["entries"].values() if e["status"] == "ok"]
    theirs = {(e["type"], e["imatrix"]): e for e in ok if by_llama(e)}
    pairs = [(e, theirs[(e["type"], e["imatrix"])]) for e in ok
             if not by_llama(e) and (e["type"], e["imatrix"]) in theirs]
    if not pairs:
        return []
    lines = ["", "## lowbit against llama-quantize", "",
             "The same preset, source file, importance matrix and threads; both files measured here by "
             "lowbit. KLD ratio below 1: lowbit's file is closer to the base. Quantize time and peak "
             "resident memory: llama-quantize as a child process (its own peak); lowbit in the ladder's "
             "process (the peak reset before it, so the ladder's own memory counts too).", "",
             "| preset | imatrix | MiB lowbit / llama | mean KLD lowbit / llama | KLD ratio "
             "| PPL lowbit / llama | same top lowbit / llama | quantize s lowbit / llama "
             "| peak MiB lowbit / llama | mean KLD, second text, lowbit / llama |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ours, llama in sorted(pairs, key=lambda p: (-p[0]["bpw"], not p[0]["imatrix"])):
        ko, kl = ours["kld"]["mean"], llama["kld"]["mean"]
        lines.append(
            f"| {_name(ours)} | {'yes' if ours['imatrix'] else 'no'} "
            f"| {ours['file_bytes'] / MiB:.1f} / {llama['file_bytes'] / MiB:.1f} "
            f"| {ko:.5f} / {kl:.5f} | {ko / kl if kl else float('nan'):.3f} "
            f"| {ours['ppl']:.3f} / {llama['ppl']:.3f} "
            f"| {100 * ours['kld']['same_top']:.2f} / {100 * llama['kld']['same_top']:.2f} % "
            f"| {ours['quantize_seconds']:.0f} / {llama['quantize_seconds']:.0f} "
            f"| {_peak_cell(ours) or '-'} / {_peak_cell(llama) or '-'} "
            f"| {_extra_cell(ours) or '-'} / {_extra_cell(llama) or '-'} |")
    return lines


def _figure(title: str, cap: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.01, cap, fontsize=7, wrap=True, va="bottom")
    fig.subplots_adjust(bottom=0.16)
    return fig, ax, plt


def _save(fig, ax, plt, path: Path, ylabel: str) -> Path:
    """Log y against bits per weight, the legend, the PNG."""
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (whole file)")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


NEAR_ZERO = 1e-5   # mean KLD below this: the entry reproduces the base (the source is that preset)


def _kld_for_plot(rows: list[dict]) -> dict[int, float]:
    """y of each entry: its mean KLD, or, for an entry that reproduces the base, a floor a
    little below the others (a log axis has no zero, and 1e-7 would squash every other point)."""
    others = [e["kld"]["mean"] for e in rows if e["kld"]["mean"] >= NEAR_ZERO]
    floor = min(others) / 3 if others else NEAR_ZERO
    return {id(e): max(e["kld"]["mean"], floor) if e["kld"]["mean"] < NEAR_ZERO else e["kld"]["mean"]
            for e in rows}


def plot_kld(data: dict, path: Path, machine: str) -> Path:
    """Mean KLD against bits per weight (log y): presets with and without imatrix, by lowbit and
    by llama-quantize, lowbit's mixes, and the Pareto front drawn through the best entries."""
    rows = ok_entries(data)
    y = _kld_for_plot(rows)
    fig, ax, plt = _figure("KL-divergence against size", caption(data, machine))
    series = ((True, False, "o", "C0", "lowbit presets with importance matrix"),
              (False, False, "s", "C0", "lowbit presets without"),
              (True, True, "^", "C3", "llama-quantize presets with importance matrix"),
              (False, True, "v", "C3", "llama-quantize presets without"))
    for with_im, llama, marker, color, label in series:
        sel = [e for e in rows if e["imatrix"] == with_im and not is_allocated(e) and by_llama(e) == llama
               and not e.get("method")]
        if not sel:
            continue
        ax.scatter([e["bpw"] for e in sel], [y[id(e)] for e in sel], marker=marker,
                   facecolors=color if with_im else "none", edgecolors=color, label=label, zorder=3)
        for e in sel:
            name = e["type"] + (f" = the base (KLD {e['kld']['mean']:.0e})" if e["kld"]["mean"] < NEAR_ZERO else "")
            ax.annotate(name, (e["bpw"], y[id(e)]), fontsize=7,
                        xytext=(4, 2 if with_im else -8), textcoords="offset points")
    for method, marker, color in (("gptq", "D", "C5"), ("awq", "P", "C6"), ("gptq+awq", "X", "C8")):
        sel = sorted((e for e in rows if e.get("method") == method), key=lambda e: e["bpw"])
        if sel:
            ax.scatter([e["bpw"] for e in sel], [y[id(e)] for e in sel], marker=marker, color=color, zorder=4,
                       label=f"lowbit presets, importance matrix and {method}")
            ax.plot([e["bpw"] for e in sel], [y[id(e)] for e in sel], ":", color=color, zorder=2)
    for fresh, color, label in ((False, "C2", "lowbit per-tensor allocation"),
                                (True, "C4", "lowbit per-tensor allocation without the source's types")):
        mixes = sorted((e for e in rows if is_allocated(e) and without_source(e["type"]) == fresh),
                       key=lambda e: e["bpw"])
        if not mixes:
            continue
        ax.scatter([e["bpw"] for e in mixes], [y[id(e)] for e in mixes], marker="*", s=120,
                   color=color, label=label, zorder=4)
        ax.plot([e["bpw"] for e in mixes], [y[id(e)] for e in mixes], "--", color=color, zorder=2)
        by_point = {}   # budgets the allocator did not need all of can give the same mix
        for e in mixes:
            by_point.setdefault((round(e["bpw"], 3), round(y[id(e)], 6)), []).append(e)
        for same in by_point.values():
            budgets = ", ".join(f"{alloc_budget(e['type']):g}" for e in same)
            ax.annotate(f"{same[0]['bpw']:.2f} bpw mix (budget {budgets})", (same[0]["bpw"], y[id(same[0])]),
                        fontsize=7, xytext=(4, -10 if fresh else 6), textcoords="offset points", color=color)
    pts = [(e["bpw"], y[id(e)]) for e in rows]
    front = pareto(pts)
    if front:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="C1",
                label="Pareto front", zorder=2)
    return _save(fig, ax, plt, path, "mean KL-divergence to the base (nats)")


def plot_speed(data: dict, path: Path, machine: str) -> Path:
    rows = [e for e in ok_entries(data) if e["imatrix"] or not any(
        o["imatrix"] and o["type"] == e["type"] for o in ok_entries(data))]
    fig, ax, plt = _figure("Speed against size", caption(data, machine))
    s = speed_settings(data)
    for key, label, color in (("pp_tps", f"prompt processing (pp{s['pp']})", "C0"),
                              ("tg_tps", f"generation (tg{s['tg']})", "C3")):
        sel = [(e, tps(e, data, key)) for e in rows if tps(e, data, key)]
        ax.scatter([e["bpw"] for e, _ in sel], [v for _, v in sel], color=color, label=label)
        for e, v in sel:
            ax.annotate(e["type"], (e["bpw"], v), fontsize=7, xytext=(4, 2), textcoords="offset points")
    return _save(fig, ax, plt, path, "tokens/s")


def write_report(data: dict, out_dir: Path, machine: str) -> Path:
    plots = []
    if ok_entries(data):
        plots = [plot_kld(data, out_dir / "kld_vs_bpw.png", machine)]
        if speed_settings(data):
            plots.append(plot_speed(data, out_dir / "speed_vs_bpw.png", machine))
    path = out_dir / "report.md"
    path.write_text(markdown(data, machine, [str(p) for p in plots]))
    return path
