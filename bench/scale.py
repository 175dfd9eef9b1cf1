"""Quantize time and peak memory against model size: `lowbit quantize` on synthetic F16 llamas of
several sizes (bench/synthetic_llama.py: TinyLlama's shapes, layers added), and llama-quantize
on one of them in the same sitting.

    python bench/scale.py --work DIR --sizes 0.5B,1B,3B --types Q4_K_M,IQ2_XXS \\
        --llama-bin LLAMA_CPP_BIN_DIR --llama-size 1B -t 2

Each run is a child process; its peak resident set is the kernel's high-water mark for it
(ru_maxrss from wait4, the same figure as VmHWM: anonymous and file-backed pages), its CPU time
user + system. The i-quants get a synthetic importance matrix (log-normal per column, fixed seed,
one entry per matrix), the same file for both tools. Before the timed runs, lowbit quantizes a
narrow model with as many layers as the largest size to every type once, so that no timed run
compiles (numba's cache) and every one plans the same types per layer.

Results go to DIR/scale.json, one entry per (tool, size, type), so an interrupted sitting
resumes (--redo measures again); the table and the straight-line fits (wall time and peak
against parameters, extrapolated to 8B and 70B) are printed as Markdown. Sources are kept in
DIR for the next sitting; quantized outputs are deleted as soon as measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_llama as synth  # noqa: E402
from machine import describe  # noqa: E402

NEEDS_IMATRIX = ("IQ1", "IQ2", "IQ3_XXS", "IQ3_S", "Q2_K_S")


def run_measured(cmd: list[str]) -> dict:
    """Run cmd as a child and read its own rusage (wait4): wall and CPU seconds, peak RSS in MiB."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    child.stderr.close()
    raise_if_failed(child.returncode, cmd, err.decode(errors="replace"))
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_mib": round(usage.ru_maxrss / 1024, 1), "cmd": " ".join(cmd)}


def raise_if_failed(rc: int, cmd: list[str], text: str) -> None:
    if rc != 0:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n{tail}")


def synthetic_imatrix(path: Path, shape: synth.LlamaShape, seed: int = 0) -> Path:
    """An importance matrix with an entry for every matrix: log-normal column weights."""
    from lowbit.quant import imatrix as imx

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    im = imx.ImportanceMatrix(datasets=["synthetic"], chunk_count=1, chunk_size=512)
    for name, _, cols in shape.matrices():
        im.sums[name] = rng.lognormal(0.0, 1.0, cols)
        im.counts[name] = 1
    imx.save(im, path)
    return path


def needs_imatrix(qtype: str) -> bool:
    return qtype.startswith(NEEDS_IMATRIX)


def lowbit_cmd(src: Path, out: Path, qtype: str, threads: int, im: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "lowbit.eval.cli", "quantize", str(src), str(out), qtype, "-t", str(threads)]
    return cmd + (["--imatrix", str(im)] if im else [])


def llama_cmd(bin_dir: Path, src: Path, out: Path, qtype: str, threads: int, im: Path | None) -> list[str]:
    cmd = [str(bin_dir / "llama-quantize")] + (["--imatrix", str(im)] if im else [])
    return cmd + [str(src), str(out), qtype, str(threads)]


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1) if len(xs) > 1 else (0.0, ys[0])
    return float(a), float(b)


def report(results: dict, sizes: list[str], types: list[str], llama_size: str | None, threads: int) -> str:
    lines = [f"Machine: {describe(threads)}", "",
             "| tool | size | parameters | F16 GiB | type | wall s | CPU s | peak RSS MiB |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for tool in ("lowbit", "llama.cpp"):
        for qtype in types:
            for size in sizes:
                r = results.get(f"{tool}|{size}|{qtype}")
                if r:
                    lines.append(f"| {tool} | {size} | {r['params'] / 1e9:.3f} B | {r['src_gib']:.2f} | {qtype} "
                                 f"| {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_mib']:.0f} |")
    lines += ["", "| type | peak RSS, largest / smallest | lowbit / llama-quantize peak at "
              f"{llama_size} | wall s per B parameters (fit) | 8B: wall, peak | 70B: wall, peak |",
              "|---|---:|---:|---:|---|---|"]
    for qtype in types:
        runs = [results[k] for k in (f"lowbit|{s}|{qtype}" for s in sizes) if k in results]
        if not runs:
            continue
        params = [r["params"] / 1e9 for r in runs]
        peaks = [r["peak_mib"] for r in runs]
        a, b = fit(params, [r["wall_s"] for r in runs])
        pa, pb = fit(params, peaks)
        ratio = "-"
        lc = results.get(f"llama.cpp|{llama_size}|{qtype}")
        lb = results.get(f"lowbit|{llama_size}|{qtype}")
        if lc and lb:
            ratio = f"{lb['peak_mib'] / lc['peak_mib']:.2f} ({lb['peak_mib']:.0f} / {lc['peak_mib']:.0f} MiB)"
        big = [f"{(a + b * n) / 3600:.1f} h, {pa + pb * n:.0f} MiB" for n in (8.0, 70.0)]
        lines.append(f"| {qtype} | {max(peaks) / min(peaks):.3f} | {ratio} | {b:.0f} | {big[0]} | {big[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="directory for the sources, outputs and scale.json")
    p.add_argument("--sizes", default="0.5B,1B,3B")
    p.add_argument("--types", default="Q4_K_M,IQ2_XXS")
    p.add_argument("--llama-bin", type=Path, help="directory holding llama-quantize (omit: lowbit only)")
    p.add_argument("--llama-size", default="1B", help="the size llama-quantize runs on")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--redo", action="store_true", help="measure again what scale.json already holds")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    res_path = args.work / "scale.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}

    def save():
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, res_path)

    shapes = {s: synth.LlamaShape(synth.layers_for(synth.parse_count(s))) for s in sizes}
    if not args.report_only:
        sources = {}
        for size, shape in shapes.items():
            sources[size] = args.work / f"synthetic-{size}-f16.gguf"
            if not sources[size].exists():
                print(f"writing {sources[size].name}: {shape.n_layer} layers", flush=True)
                synth.write(sources[size], shape)
        # the warm-up: every kernel compiled, on a narrow model planned like the largest
        narrow = synth.LlamaShape(max(s.n_layer for s in shapes.values()), n_embd=256, n_ff=512, n_head=8,
                                  n_head_kv=1, n_vocab=512)
        # named by its layer count: a sitting with other sizes must not reuse another's
        warm = args.work / f"warm-up-{narrow.n_layer}l-f16.gguf"
        if not warm.exists():
            synth.write(warm, narrow)
        for qtype in types:
            im = (synthetic_imatrix(args.work / f"warm-up-{narrow.n_layer}l.imatrix.gguf", narrow)
                  if needs_imatrix(qtype) else None)
            print(f"warm-up {qtype}", flush=True)
            run_measured(lowbit_cmd(warm, args.work / "warm-up-out.gguf", qtype, args.threads, im))
            (args.work / "warm-up-out.gguf").unlink()
        jobs = []   # per type, llama-quantize right after lowbit: the machine's load as alike as can be
        for t in types:
            jobs += [("lowbit", s, t) for s in sizes] + ([("llama.cpp", args.llama_size, t)] if args.llama_bin else [])
        for tool, size, qtype in jobs:
            key = f"{tool}|{size}|{qtype}"
            if key in results and not args.redo:
                continue
            src, out = sources[size], args.work / f"out-{size}-{qtype}.gguf"
            im = synthetic_imatrix(args.work / f"synthetic-{size}.imatrix.gguf", shapes[size]) if needs_imatrix(qtype) else None
            cmd = (lowbit_cmd(src, out, qtype, args.threads, im) if tool == "lowbit"
                   else llama_cmd(args.llama_bin, src, out, qtype, args.threads, im))
            print(f"{key} ...", flush=True)
            r = run_measured(cmd)
            r.update(params=shapes[size].n_params, layers=shapes[size].n_layer,
                     src_gib=src.stat().st_size / 2**30, out_mib=out.stat().st_size / 2**20,
                     when=time.strftime("%Y-%m-%d %H:%M"), load_avg=os.getloadavg()[0])
            out.unlink()
            results[key] = r
            save()
            print(f"  {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, peak {r['peak_mib']:.0f} MiB", flush=True)
    print(report(results, sizes, types, args.llama_size if args.llama_bin else None, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
