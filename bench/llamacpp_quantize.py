"""Compare lowbit's quantizer with mainline llama.cpp's: the per-tensor plans of every preset,
then files and perplexities across the two (lowbit's file in llama.cpp, llama.cpp's in lowbit).

This script runs under the llama-cpp-python venv, NOT lowbit's: it imports llama_cpp, numpy and
gguf (`pip install gguf==0.19.0` into that venv), never lowbit. lowbit runs as a subprocess
(`--lowbit`, default the `lowbit` on PATH); llama.cpp's perplexity comes from
bench/llamacpp_check.py, run as a subprocess under this same interpreter. It is a manual
benchmark, not a test (pytest does not collect bench/). Everything runs one job at a time with
`-t` threads (default 2).

Steps, each resumable (results go to OUT/results.json or --results; `--force` redoes entries):

  plans    For each model and preset: quantize with llama.cpp (llama_model_quantize,
           allow_requantize, nthread -t, the model's importance matrix passed in params.imatrix
           as a NULL-terminated llama_model_imatrix_data array, normalized as llama-quantize
           does: in_sum2 / counts for GGUF imatrix files, sums / ncall for legacy .dat files;
           the quantize.imatrix.* keys are added as llama-quantize adds them), read the output's
           tensor types with gguf, run `lowbit quantize ... --dry-run`, parse its per-tensor
           lines and list the tensors whose types differ. Sizes: llama.cpp's whole file, and
           lowbit's whole file as its writer would lay it out (the source header plus the
           imatrix keys, then every tensor padded to the alignment; `interop` checks this
           against real files). llama.cpp's file is kept only for the presets in MODELS[..]
           ["keep"]. `--lowbit-only` redoes lowbit's dry-runs and keeps llama.cpp's side.
  interop  For each kept preset of the interop models: `lowbit quantize` for real into
           LOWBIT_OUT (timed), compare the real file's types with llama.cpp's and with the
           dry-run, then perplexity at -c/--chunks of both files in both programs
           (`lowbit perplexity --json` and llamacpp_check.py). lowbit's perplexity always runs
           again; llama.cpp's is reused for a file with the same sha256 (--force-llama-ppl).
  matched  Where plans still differ: lowbit quantizes with llama.cpp's exact plan (every
           mismatch forced with an anchored --tensor-type), so the two files differ only by
           the encoder; then both perplexities.
  report   Markdown tables from the results (written beside them as .md).

lowbit may be edited while this runs: every lowbit run records a fingerprint of its source
(sizes and mtimes of quant/, runtime/, eval/) before and after, and the report lists them.

    # $P: the llama-cpp-python venv's Python; DIR holds smollm2.imatrix.gguf and gemma3.imatrix.gguf
    $P bench/llamacpp_quantize.py plans --imatrix-dir DIR   # 27 presets x 2 models, ~25 min on 2 threads
    $P bench/llamacpp_quantize.py interop    # SmolLM2, the 8 kept presets, ~25 min
    $P bench/llamacpp_quantize.py matched    # only where plans differ
    $P bench/llamacpp_quantize.py report

llama.cpp refuses IQ1_S/IQ1_M/IQ2_XXS/IQ2_XS/IQ2_S without an importance matrix; both real
models are already quantized (Q4_1, Q4_K_M), so both programs requantize from the exactly
dequantized weights.
"""

import argparse
import ctypes
import functools
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

HERE = Path(__file__).resolve().parent
MODELS_DIR = Path(os.path.expanduser("~/.cache/lowbit/models"))
MODELS = {
    "smollm2": {"tag": "smol", "path": MODELS_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf",
                "imatrix": "smollm2.imatrix.gguf", "ids": "wiki.test.smollm2-135m.ids.gz",
                "keep": ["Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_XXS", "Q2_K", "IQ2_M", "IQ2_XXS", "IQ1_M"]},
    "gemma3": {"tag": "gemma", "path": MODELS_DIR / "gemma-3-270m-q4_k_m.gguf",
               "imatrix": "gemma3.imatrix.gguf", "ids": "wiki.test.gemma3-270m.ids.gz",
               "keep": ["IQ2_M", "Q3_K_M"]},
}
PRESETS = ("Q2_K_S Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K Q8_0 Q4_0 Q4_1 "
           "Q5_0 Q5_1 IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ3_XXS IQ3_XS IQ3_S IQ3_M IQ4_NL "
           "IQ4_XS").split()


# ---------------------------------------------------------------------------------------------
# llama.cpp's log, kept per run

_LOG = []


@llama_cpp.llama_log_callback
def _log(level, text, user_data):
    _LOG.append(text.decode("utf-8", "replace"))


llama_cpp.llama_log_set(_log, None)
llama_cpp.llama_backend_init()


# ---------------------------------------------------------------------------------------------
# importance matrices, as llama-quantize's load_imatrix() normalizes them

@functools.lru_cache(maxsize=None)   # read once per run, not once per preset (callers do not modify it)
def load_imatrix(path: str) -> dict:
    """{tensor name: float32 array, sums divided by counts}, plus 'datasets' and 'chunks'."""
    try:
        r = gguf.GGUFReader(path)
    except Exception:
        return _load_legacy_imatrix(path)
    by_name = {t.name: t for t in r.tensors}
    data = {}
    for name, t in by_name.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        cnt = by_name.get(base + ".counts")
        if cnt is None:
            raise ValueError(f"{path}: {name} has no .counts")
        sums = np.asarray(t.data, dtype=np.float32).reshape(-1)
        counts = np.asarray(cnt.data, dtype=np.float32).reshape(-1)
        ne0 = sums.size // counts.size
        e = np.ones(sums.size, dtype=np.float32)
        for j, c in enumerate(counts):  # one count per expert; dense models have one
            if c > 0:
                e[j * ne0:(j + 1) * ne0] = sums[j * ne0:(j + 1) * ne0] / c
        data[base] = e
    ds = r.fields.get("imatrix.datasets")
    chunks = r.fields.get("imatrix.chunk_count")
    return {"entries": data, "datasets": list(ds.contents()) if ds else [],
            "chunks": int(chunks.contents()) if chunks else 0}


def _load_legacy_imatrix(path: str) -> dict:
    raw = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return v
    (n,) = take("<i")
    data = {}
    for _ in range(n):
        (ln,) = take("<i")
        name = raw[pos:pos + ln].decode()
        pos += ln
        ncall, nval = take("<ii")
        vals = np.frombuffer(raw, dtype=np.float32, count=nval, offset=pos).copy()
        pos += 4 * nval
        data[name] = vals / ncall if ncall > 0 else vals
    chunks, datasets = 0, []
    if pos + 4 <= len(raw):
        (chunks,) = take("<i")
        if pos + 4 <= len(raw):
            (ln,) = take("<i")
            datasets = [raw[pos:pos + ln].decode()]
    return {"entries": data, "datasets": datasets, "chunks": chunks}


# ---------------------------------------------------------------------------------------------
# quantizing with llama.cpp

def llama_quantize(src: Path, dst: Path, preset: str, imatrix_path: str, threads: int) -> dict:
    im = load_imatrix(imatrix_path)
    names = [k.encode() for k in im["entries"]]
    arrays = [np.ascontiguousarray(v, dtype=np.float32) for v in im["entries"].values()]
    entries = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()
    for i, (nm, a) in enumerate(zip(names, arrays)):
        entries[i].name = nm
        entries[i].data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = a.size
    entries[len(arrays)].name = None  # terminator

    kvs = (llama_cpp.llama_model_kv_override * 5)()  # as llama-quantize adds them

    def kv(i, key, val):
        kvs[i].key = key.encode()
        if isinstance(val, str):
            kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            kvs[i].value.val_str = val.encode()[:127]
        else:
            kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            kvs[i].value.val_i64 = val
    kv(0, "quantize.imatrix.file", imatrix_path)
    kv(1, "quantize.imatrix.dataset", im["datasets"][0] if im["datasets"] else "")
    kv(2, "quantize.imatrix.entries_count", len(arrays))
    kv(3, "quantize.imatrix.chunks_count", im["chunks"])
    kvs[4].key = b""  # terminator

    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = threads
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    p.allow_requantize = True
    p.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    p.kv_overrides = ctypes.cast(kvs, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    _LOG.clear()
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    secs = time.perf_counter() - t0
    log = "".join(_LOG)
    return {"rc": rc, "seconds": secs, "log": log, "imatrix_entries": len(arrays)}


def file_types(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# lowbit's plan (its --dry-run prints text only)

LINE = re.compile(r"^(\S+)\s+(\d+(?: x \d+)*)\s+(\S+) -> (\S+)\s*(.*)$")


def lowbit_plan(lowbit: str, model: Path, preset: str, imatrix: str, threads: int, out_dir: Path) -> dict:
    cmd = [lowbit, "quantize", str(model), str(out_dir / "dry-run.gguf"), preset, "--allow-requantize",
           "--imatrix", imatrix, "--dry-run", "-t", str(threads)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    res = {"cmd": " ".join(cmd), "rc": p.returncode, "seconds": time.perf_counter() - t0}
    if p.returncode != 0:
        res["error"] = (p.stderr.strip() or p.stdout.strip())[-3000:]
        return res
    tensors, summary = {}, ""
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if m:
            name, shape, src_t, dst_t, reason = m.groups()
            tensors[name] = {"shape": [int(x) for x in shape.split(" x ")], "src": src_t,
                             "type": dst_t, "reason": reason}
        elif line.startswith("plan:"):
            summary = line
    res.update(tensors=tensors, summary=summary)
    return res


def planned_bytes(shape, tname: str) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[tname]]
    n = math.prod(shape)
    return n // block * size


def lowbit_file_size(src: Path, plan: dict, imatrix: str) -> int:
    """Size of the file lowbit's writer would write for this plan: the source's metadata and
    tensor infos (the same names and dimensions), minus its quantize.imatrix.* keys, plus the four
    lowbit adds, padded to the alignment; then each tensor padded to the alignment."""
    r = gguf.GGUFReader(str(src))
    last = r.tensors[-1].field
    header = last.offset + sum(int(x.nbytes) for x in last.parts)
    for k, f in r.fields.items():
        if k.startswith("quantize.imatrix."):
            header -= sum(int(x.nbytes) for x in f.parts)
    im = load_imatrix(imatrix)
    for key, val in (("quantize.imatrix.file", imatrix),
                     ("quantize.imatrix.dataset", im["datasets"][0] if im["datasets"] else ""),
                     ("quantize.imatrix.entries_count", 0), ("quantize.imatrix.chunks_count", 0)):
        header += 8 + len(key.encode()) + 4 + (8 + len(val.encode()) if isinstance(val, str) else 4)
    align = int(r.fields["general.alignment"].contents()) if "general.alignment" in r.fields else 32
    pad = lambda n: -(-n // align) * align  # noqa: E731
    return pad(header) + sum(pad(planned_bytes(t["shape"], t["type"])) for t in plan["tensors"].values())


def diff_types(lowbit_types: dict, llama_types: dict) -> list:
    out = []
    for name in list(llama_types) + [n for n in lowbit_types if n not in llama_types]:
        a, b = lowbit_types.get(name), llama_types.get(name)
        if a != b:
            out.append({"tensor": name, "lowbit": a, "llama_cpp": b})
    return out



def lowbit_fingerprint(src: str) -> str:
    """Size and mtime of every .py file of lowbit's quant/, runtime/ and eval/, hashed: lowbit may
    be edited while this runs, so each lowbit run records it before and after."""
    h = hashlib.sha1()
    for d in ("quant", "runtime", "eval"):
        for f in sorted(Path(src, d).rglob("*.py")):
            st = f.stat()
            h.update(f"{f.relative_to(src)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def run_json(cmd: list, log: Path) -> tuple:
    """Run a command that prints one JSON line: (parsed or None, returncode, stderr tail)."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    lines = [l for l in p.stdout.splitlines() if l.strip().startswith("{")]
    return (json.loads(lines[-1]) if lines else None), p.returncode, p.stderr.strip()[-3000:]


# ---------------------------------------------------------------------------------------------
# results file

def results_path(args) -> Path:
    return Path(args.results) if args.results else Path(args.out) / "results.json"


def load_results(args) -> dict:
    f = results_path(args)
    res = json.loads(f.read_text()) if f.exists() else {}
    for k in ("plans", "interop", "matched", "llama_cpp_ppl"):
        res.setdefault(k, {})
    return res


def save_results(args, res: dict) -> None:
    f = results_path(args)
    tmp = f.with_name(f.name + ".partial")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, f)


# ---------------------------------------------------------------------------------------------
# plans

def cmd_plans(args) -> int:
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    res = load_results(args)
    for mkey in args.models:
        m = MODELS[mkey]
        for preset in args.presets:
            key = f"{mkey}/{preset}"
            old = res["plans"].get(key)
            if old and not (args.force or args.lowbit_only):
                print(f"{key}: done before (--force to redo)")
                continue
            dst = out / f"{m['tag']}-{preset}.gguf"
            entry = {"model": str(m["path"]), "preset": preset, "imatrix": m["imatrix"]}
            if args.lowbit_only and old and "types" in old.get("llama_cpp", {}):
                entry["llama_cpp"] = old["llama_cpp"]  # llama.cpp's side does not change
                print(f"{key}: llama.cpp (kept) ...", end="", flush=True)
            else:
                print(f"{key}: llama.cpp ...", end="", flush=True)
                q = llama_quantize(m["path"], dst, preset, m["imatrix"], args.threads)
                (out / "logs" / f"{m['tag']}-{preset}.log").write_text(q["log"])
                entry["llama_cpp"] = {"rc": q["rc"], "seconds": q["seconds"]}
                if q["rc"] == 0 and dst.exists():
                    entry["llama_cpp"].update(types=file_types(dst), file_bytes=dst.stat().st_size)
                else:
                    entry["llama_cpp"]["error"] = [l for l in q["log"].splitlines() if l.strip()][-5:]
                keep = preset in m["keep"]
                if dst.exists() and not keep:
                    dst.unlink()
                entry["llama_cpp"]["kept"] = str(dst) if keep and dst.exists() else None
                print(f" {q['seconds']:.1f} s", end="", flush=True)
            print("; lowbit plan ...", end="", flush=True)
            fp = lowbit_fingerprint(args.lowbit_src)
            lp = lowbit_plan(args.lowbit, m["path"], preset, m["imatrix"], args.threads, Path(args.lowbit_out))
            entry["lowbit"] = {k: v for k, v in lp.items() if k != "tensors"}
            entry["lowbit"].update(lowbit_src=fp, when=time.strftime("%Y-%m-%d %H:%M:%S"))
            if lp["rc"] == 0:
                entry["lowbit"]["types"] = {n: t["type"] for n, t in lp["tensors"].items()}
                entry["lowbit"]["reasons"] = {n: t["reason"] for n, t in lp["tensors"].items()}
                entry["lowbit"]["tensor_bytes"] = sum(planned_bytes(t["shape"], t["type"])
                                                      for t in lp["tensors"].values())
                entry["lowbit"]["file_bytes_est"] = lowbit_file_size(m["path"], lp, m["imatrix"])
            if "types" in entry["llama_cpp"] and "types" in entry["lowbit"]:
                entry["mismatches"] = diff_types(entry["lowbit"]["types"], entry["llama_cpp"]["types"])
            res["plans"][key] = entry
            save_results(args, res)
            mm = entry.get("mismatches")
            print(f" {len(mm)} mismatches" if mm is not None else
                  f" FAILED (llama.cpp rc {entry['llama_cpp']['rc']}, lowbit rc {lp['rc']})")
    return 0


# ---------------------------------------------------------------------------------------------
# perplexity of one file in both programs

def ppl_both(args, res: dict, m: dict, f: Path, tag: str, entry: dict, prefix: str) -> None:
    """Perplexity of file f in lowbit and in llama.cpp, into entry[prefix + '.in_lowbit'] and
    entry[prefix + '.in_llama_cpp']. lowbit always runs (its code may have changed); llama.cpp's
    result is reused for a file with the same sha256 at the same settings."""
    ppl_dir = Path(args.out) / "ppl"
    ppl_dir.mkdir(parents=True, exist_ok=True)
    digest = sha256(f)
    entry[prefix + ".sha256"] = digest
    cmd = [args.lowbit, "perplexity", str(f), "-f", args.text, "-c", str(args.ctx_size),
           "--chunks", str(args.chunks), "--json", "-t", str(args.threads)]
    print(f"  {prefix}: lowbit perplexity ...", end="", flush=True)
    fp0 = lowbit_fingerprint(args.lowbit_src)
    j, rc, err = run_json(cmd, ppl_dir / f"{tag}.lowbit.log")
    fp1 = lowbit_fingerprint(args.lowbit_src)
    entry[prefix + ".in_lowbit"] = {"cmd": " ".join(cmd), "rc": rc, "lowbit_src": fp0,
                                    "src_changed_during_run": fp0 != fp1, **(j or {"error": err})}
    if j:
        print(f" {j['ppl']:.4f} ({j['seconds']:.0f} s)", end="", flush=True)
    else:
        print(" FAILED", end="", flush=True)

    cache_key = f"{digest}:{args.ctx_size}:{args.chunks}:{args.text}"
    cached = res["llama_cpp_ppl"].get(cache_key)
    if cached and not args.force_llama_ppl:
        r = dict(cached, cached=True)
        print(f"; llama.cpp (same file before) {r['ppl']:.4f}", flush=True)
    else:
        cmd = [sys.executable, str(HERE / "llamacpp_check.py"), str(f), "-f", args.text, "-c",
               str(args.ctx_size), "--chunks", str(args.chunks), "-t", str(args.threads), "--json"]
        if m.get("ids") and os.path.exists(m["ids"]):
            cmd += ["--check-ids", m["ids"]]
        print("; llama.cpp ...", end="", flush=True)
        j2, rc, err = run_json(cmd, ppl_dir / f"{tag}.llamacpp.log")
        r = {"cmd": " ".join(cmd), "rc": rc, **(j2 or {"error": err})}
        if "ppl" in r:
            res["llama_cpp_ppl"][cache_key] = dict(r)   # a copy: r gets this run's lowbit figures below
            print(f" {r['ppl']:.4f} ({r['seconds']:.0f} s)", flush=True)
        else:
            print(f" FAILED {str(r.get('error'))[-300:]}", flush=True)
    if j and "ppl" in r:
        r["lowbit_ppl"] = j["ppl"]
        r["rel_diff"] = (r["ppl"] - j["ppl"]) / j["ppl"]
    entry[prefix + ".in_llama_cpp"] = r


def lowbit_quantize(args, m: dict, src_preset: str, dst: Path, extra: list) -> dict:
    cmd = [args.lowbit, "quantize", str(m["path"]), str(dst), src_preset, "--allow-requantize",
           "--imatrix", m["imatrix"], "-t", str(args.threads)] + extra
    fp0 = lowbit_fingerprint(args.lowbit_src)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    q = {"cmd": " ".join(cmd), "rc": p.returncode, "wall_seconds": time.perf_counter() - t0,
         "stdout": p.stdout.strip()[-500:], "lowbit_src": fp0,
         "src_changed_during_run": fp0 != lowbit_fingerprint(args.lowbit_src)}
    sm = re.search(r"; ([\d.]+) s$", p.stdout.strip())
    if sm:
        q["seconds"] = float(sm.group(1))
    if p.returncode != 0:
        q["error"] = p.stderr.strip()[-3000:]
    return q


# ---------------------------------------------------------------------------------------------
# interop: lowbit's files and llama.cpp's, each in both programs

def pending(args, res: dict, section: str):
    """(model, preset, key) for each kept preset of the interop models not yet in res[section]."""
    Path(args.lowbit_out).mkdir(parents=True, exist_ok=True)
    for mkey in args.interop_models:
        m = MODELS[mkey]
        for preset in [p for p in args.presets if p in m["keep"]]:
            key = f"{mkey}/{preset}"
            if key in res[section] and not args.force:
                print(f"{key}: done before (--force to redo)")
                continue
            yield m, preset, key


def cmd_interop(args) -> int:
    out, lb_out = Path(args.out), Path(args.lowbit_out)
    res = load_results(args)
    for m, preset, key in pending(args, res, "interop"):
        name = f"{m['tag']}-{preset}.gguf"
        lb_file, lc_file = lb_out / name, out / name
        entry = {"preset": preset, "lowbit_file": str(lb_file), "llama_cpp_file": str(lc_file),
                 "chunks": args.chunks, "n_ctx": args.ctx_size}
        print(f"{key}: lowbit quantize ...", end="", flush=True)
        q = entry["lowbit_quantize"] = lowbit_quantize(args, m, preset, lb_file, [])
        print(f" {q['wall_seconds']:.1f} s" + ("" if q["rc"] == 0 else " FAILED"), flush=True)
        if q["rc"] == 0 and lb_file.exists():
            entry["lowbit_file_bytes"] = lb_file.stat().st_size
            plan = res["plans"].get(key, {}).get("lowbit", {})
            entry["lowbit_file_bytes_est"] = plan.get("file_bytes_est")
            lbt = file_types(lb_file)
            entry["lowbit_file_vs_plan"] = diff_types(lbt, plan.get("types", {}))
            if lc_file.exists():
                entry["file_mismatches"] = diff_types(lbt, file_types(lc_file))
        if lc_file.exists():
            entry["llama_cpp_file_bytes"] = lc_file.stat().st_size
        for side, f in (("lowbit_file", lb_file), ("llama_cpp_file", lc_file)):
            if f.exists() and (side != "lowbit_file" or q["rc"] == 0):
                ppl_both(args, res, m, f, f"{side}.{m['tag']}-{preset}", entry, side)
        res["interop"][key] = entry
        save_results(args, res)
    return 0


# ---------------------------------------------------------------------------------------------
# matched: lowbit's encoder on llama.cpp's exact plan

def cmd_matched(args) -> int:
    """The remaining plan mismatches become --tensor-type overrides (anchored tensor names), so
    lowbit's file differs from llama.cpp's only by the encoder."""
    out, lb_out = Path(args.out), Path(args.lowbit_out)
    res = load_results(args)
    for m, preset, key in pending(args, res, "matched"):
        plan = res["plans"].get(key)
        lc_file = out / f"{m['tag']}-{preset}.gguf"
        if not plan or "mismatches" not in plan or not lc_file.exists():
            print(f"{key}: no plan or no llama.cpp file; run `plans` first")
            continue
        if not plan["mismatches"]:
            res["matched"][key] = {"same_plan": True, "lowbit_src": plan["lowbit"].get("lowbit_src")}
            save_results(args, res)
            print(f"{key}: plans equal (the interop step measures it)")
            continue
        f = lb_out / f"{m['tag']}-{preset}.llplan.gguf"
        overrides = []
        for x in plan["mismatches"]:
            overrides += ["--tensor-type", f"^{re.escape(x['tensor'])}$={x['llama_cpp']}"]
        entry = {"preset": preset, "file": str(f), "n_overrides": len(plan["mismatches"]),
                 "chunks": args.chunks, "n_ctx": args.ctx_size}
        print(f"{key}: lowbit quantize with llama.cpp's plan ({entry['n_overrides']} overrides) ...",
              end="", flush=True)
        q = entry["lowbit_quantize"] = lowbit_quantize(args, m, preset, f, overrides)
        print(f" {q['wall_seconds']:.1f} s" + ("" if q["rc"] == 0 else " FAILED"), flush=True)
        if q["rc"] == 0 and f.exists():
            entry["file_mismatches"] = diff_types(file_types(f), file_types(lc_file))
            entry["file_bytes"] = f.stat().st_size
            ppl_both(args, res, m, f, f"llplan.{m['tag']}-{preset}", entry, "file")
            if not args.keep_matched:
                f.unlink()
        res["matched"][key] = entry
        save_results(args, res)
    return 0


# ---------------------------------------------------------------------------------------------
# report

def _compress(mismatches: list) -> list:
    """Group tensors that differ the same way: ('blk.{0,3,7}.ffn_down.weight', lowbit, llama.cpp)."""
    groups = {}
    for x in mismatches:
        mt = re.match(r"blk\.(\d+)\.(.*)", x["tensor"])
        key = (mt.group(2) if mt else x["tensor"], x["lowbit"], x["llama_cpp"], bool(mt))
        groups.setdefault(key, []).append(int(mt.group(1)) if mt else None)
    rows = []
    for (role, a, b, blk), layers in groups.items():
        if not blk:
            name = role
        elif len(layers) == 1:
            name = f"blk.{layers[0]}.{role}"
        else:
            name = f"blk.{{{','.join(map(str, sorted(layers)))}}}.{role}"
        rows.append((name, a, b, len(layers)))
    return rows


def mib(n):
    return f"{n / 2**20:.2f}" if n else "-"


def f4(x):
    return f"{x:.4f}" if x else "-"


def pct(a, b):
    return f"{100 * (b - a) / a:+.2f} %" if a and b else "-"


def cmd_report(args) -> int:
    res = load_results(args)
    lines = []
    w = lines.append
    srcs = sorted({e.get("lowbit", {}).get("lowbit_src", "?") for e in res["plans"].values()})
    whens = sorted(e.get("lowbit", {}).get("when", "?") for e in res["plans"].values())
    w(f"## Plan mismatches (lowbit --dry-run vs llama.cpp's output file)\n\nlowbit source "
      f"fingerprint(s) {', '.join(srcs)}; dry-runs from {whens[0] if whens else '-'} to "
      f"{whens[-1] if whens else '-'}.\n")
    w("| model | preset | tensor(s) | n | lowbit | llama.cpp |")
    w("|---|---|---|--:|---|---|")
    clean, failed = [], []
    for key, e in res["plans"].items():
        mk, preset = key.split("/")
        if "mismatches" not in e:
            failed.append((key, e))
            continue
        if not e["mismatches"]:
            clean.append(key)
        for name, a, b, n in _compress(e["mismatches"]):
            w(f"| {mk} | {preset} | {name} | {n} | {a} | {b} |")
    w(f"\nNo mismatch: {', '.join(clean) or 'none'}.\n")
    for key, e in failed:
        w(f"FAILED {key}: llama.cpp {e['llama_cpp'].get('error', 'ok')}; lowbit "
          f"{e['lowbit'].get('error', 'ok')} (`{e['lowbit'].get('cmd')}`)\n")

    w("## Sizes (MiB; lowbit's whole file as its writer lays it out for the dry-run plan)\n")
    w("| model | preset | lowbit file | llama.cpp file | lowbit - llama.cpp (bytes) | llama.cpp s |")
    w("|---|---|--:|--:|--:|--:|")
    for key, e in res["plans"].items():
        mk, preset = key.split("/")
        lb, lc = e.get("lowbit", {}), e.get("llama_cpp", {})
        d = lb["file_bytes_est"] - lc["file_bytes"] if lb.get("file_bytes_est") and lc.get("file_bytes") else "-"
        w(f"| {mk} | {preset} | {mib(lb.get('file_bytes_est'))} | {mib(lc.get('file_bytes'))} | {d} | "
          f"{lc.get('seconds', 0):.1f} |")

    if res["interop"]:
        w("\n## Interop: perplexity, wiki.test.raw, -c 512 (lowbit's file / llama.cpp's file, each "
          "in lowbit and in llama.cpp)\n")
        w("| model | preset | lowbit file in lowbit | in llama.cpp | diff | llama.cpp file in lowbit | "
          "in llama.cpp | diff | chunks |")
        w("|---|---|--:|--:|--:|--:|--:|--:|--:|")
        for key, e in res["interop"].items():
            mk, preset = key.split("/")
            cells = []
            for side in ("lowbit_file", "llama_cpp_file"):
                a = e.get(side + ".in_lowbit", {}).get("ppl")
                b = e.get(side + ".in_llama_cpp", {})
                bp = b.get("ppl")
                cells += [f4(a) if a else "FAILED",
                          f4(bp) if bp else ("LOAD FAILED" if b.get("loaded") is False else "FAILED"),
                          pct(a, bp)]
            w(f"| {mk} | {preset} | {' | '.join(cells)} | {e['chunks']} |")
        w("\n## Interop: quantization time and files\n")
        w("| model | preset | lowbit s (own) | lowbit s (wall) | llama.cpp s | lowbit MiB | "
          "dry-run size error (bytes) | llama.cpp MiB | type mismatches of the real files | "
          "lowbit file vs its dry-run | token ids |")
        w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for key, e in res["interop"].items():
            mk, preset = key.split("/")
            q = e["lowbit_quantize"]
            lc_s = res["plans"].get(key, {}).get("llama_cpp", {}).get("seconds")
            est, real = e.get("lowbit_file_bytes_est"), e.get("lowbit_file_bytes")
            ids = {e.get(s + ".in_llama_cpp", {}).get("ids_match") for s in ("lowbit_file", "llama_cpp_file")}
            w(f"| {mk} | {preset} | {q.get('seconds', float('nan')):.1f} | {q['wall_seconds']:.1f} | "
              f"{lc_s or float('nan'):.1f} | {mib(real)} | {(est - real) if est and real else '-'} | "
              f"{mib(e.get('llama_cpp_file_bytes'))} | "
              f"{len(e['file_mismatches']) if 'file_mismatches' in e else '-'} | "
              f"{len(e['lowbit_file_vs_plan']) if 'lowbit_file_vs_plan' in e else '-'} | "
              f"{'match' if ids == {True} else ids} |")
        for key, e in res["interop"].items():
            q = e["lowbit_quantize"]
            if q["rc"] != 0:
                w(f"\n{key}: lowbit quantize FAILED: `{q['cmd']}`\n```\n{q.get('error')}\n```\n")
            for side in ("lowbit_file", "llama_cpp_file"):
                for prog in ("in_lowbit", "in_llama_cpp"):
                    r = e.get(f"{side}.{prog}")
                    if r and "ppl" not in r:
                        w(f"\n{key} {side} {prog} FAILED: `{r.get('cmd')}`\n```\n{r.get('error')}\n"
                          f"{r.get('llama_log', '')}\n```\n")

    if res["matched"]:
        w("\n## lowbit's encoder on llama.cpp's exact plan (remaining mismatches forced with "
          "--tensor-type)\n")
        w("| model | preset | overrides | types still differing | lowbit file in lowbit | in llama.cpp | "
          "diff | llama.cpp file in lowbit | in llama.cpp | lowbit quantize s |")
        w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for key, e in res["matched"].items():
            mk, preset = key.split("/")
            if e.get("same_plan"):
                w(f"| {mk} | {preset} | 0 | 0 | plans equal: see the interop table | | | | | |")
                continue
            a = e.get("file.in_lowbit", {}).get("ppl")
            b = e.get("file.in_llama_cpp", {}).get("ppl")
            io = res["interop"].get(key, {})
            c = io.get("llama_cpp_file.in_lowbit", {}).get("ppl")
            d = io.get("llama_cpp_file.in_llama_cpp", {}).get("ppl")
            fm = e.get("file_mismatches")
            w(f"| {mk} | {preset} | {e['n_overrides']} | {len(fm) if fm is not None else '-'} | {f4(a)} | "
              f"{f4(b)} | {pct(a, b)} | {f4(c)} | {f4(d)} | {e['lowbit_quantize']['wall_seconds']:.1f} |")
            if e["lowbit_quantize"]["rc"] != 0:
                w(f"\n{key}: lowbit quantize FAILED:\n```\n{e['lowbit_quantize'].get('error')}\n```\n")

    runs = [(k, s, e[s]) for sect in ("interop", "matched") for k, e in res[sect].items()
            for s in e if s.endswith(".in_lowbit") or s == "lowbit_quantize"]
    fps = sorted({r.get("lowbit_src", "?") for _, _, r in runs})
    moved = [f"{k} {s}" for k, s, r in runs if r.get("src_changed_during_run")]
    if runs:
        w(f"\nlowbit source fingerprint(s) of the quantize and perplexity runs: {', '.join(fps)}"
          + (f"; lowbit's code CHANGED during: {', '.join(moved)}" if moved else "") + "\n")
    text = "\n".join(lines) + "\n"
    out = results_path(args).with_suffix(".md")
    out.write_text(text)
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("step", choices=["plans", "interop", "matched", "report"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="models for `plans` (default: all)")
    p.add_argument("--interop-models", nargs="+", default=["smollm2"], choices=list(MODELS),
                   help="models for `interop` and `matched` (default: smollm2)")
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--out", default="llamacpp-out", help="llama.cpp's files, logs, ppl/")
    p.add_argument("--results", help="results file (default OUT/results.json; the report goes "
                                      "beside it as .md)")
    p.add_argument("--lowbit-out", default="lowbit-out", help="lowbit's quantized files")
    p.add_argument("--lowbit", default="lowbit", help="the lowbit command (default: the one on PATH)")
    p.add_argument("--lowbit-src", default=str(HERE.parent),
                   help="lowbit's source tree, fingerprinted around each lowbit run (default: this one)")
    p.add_argument("--imatrix-dir", help="where each model's importance matrix is (MODELS[..]['imatrix']; "
                                         "default: OUT)")
    p.add_argument("--data", default="../shared/data",
                   help="the folder with the evaluation text and llama.cpp's token ids")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-f", "--text", help="evaluation text (default: DATA/wiki.test.raw)")
    p.add_argument("-c", "--ctx-size", type=int, default=512)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--force", action="store_true", help="redo entries already in the results file")
    p.add_argument("--lowbit-only", action="store_true",
                   help="`plans`: redo lowbit's dry-runs only, keep llama.cpp's side")
    p.add_argument("--force-llama-ppl", action="store_true",
                   help="run llama.cpp's perplexity even for a file it measured before")
    p.add_argument("--keep-matched", action="store_true",
                   help="`matched`: keep lowbit's files made with llama.cpp's plan (default: delete)")
    args = p.parse_args(argv)
    bad = [x for x in args.presets if x not in PRESETS]
    if bad:
        p.error(f"unknown preset(s) {bad}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.text = args.text or str(Path(args.data) / "wiki.test.raw")
    for m in MODELS.values():   # file names -> paths under the folders given
        m["imatrix"] = str(Path(args.imatrix_dir or args.out) / m["imatrix"])
        m["ids"] = str(Path(args.data) / m["ids"])
    return {"plans": cmd_plans, "interop": cmd_interop, "matched": cmd_matched,
            "report": cmd_report}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
