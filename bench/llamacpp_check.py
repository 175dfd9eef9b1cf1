"""Check GGUF files against mainline llama.cpp: does each file load, and what perplexity does
llama.cpp give it, computed exactly as `llama-perplexity` does?

This script runs under the llama-cpp-python venv, NOT lowbit's: it imports only llama_cpp and
numpy, never lowbit. It is a manual check, not a test (pytest does not collect bench/).

Method (llama-perplexity's): the whole text is tokenized once, with special tokens added the way
the model asks (a BOS first if and only if the vocabulary's add_bos flag is set); it is cut into
consecutive chunks of `-c` tokens (the tail that does not fill a chunk is dropped); when the model
adds BOS, the first token of every chunk is OVERWRITTEN (not prepended) with BOS; each chunk runs
from an empty KV cache; the logits at positions c/2 .. c-2 score tokens c/2+1 .. c-1 of the chunk
(log-softmax in float64). The running PPL is printed after each chunk, then
`Final estimate: PPL = X +/- Y`, Y = sqrt(var(nll) / (n - 1)) * PPL as llama.cpp computes it.
(llama-perplexity packs n_batch/c chunks into one batch as separate sequences; here each chunk is
its own batch. Results are the same up to float rounding.)

Produce lowbit's side first, then compare (N chunks, 2 threads):

    lowbit perplexity FILE -f TEXT -c 512 --chunks N --json -t 2 > lowbit.json
    $P bench/llamacpp_check.py FILE -f TEXT -c 512 --chunks N --compare-json lowbit.json

($P: the Python of the llama-cpp-python venv.)

For several files, append each file's lowbit line to the same JSON file (`>>`); lines are
matched to GGUF files by path. Examples with the real models:

    T=../shared/data/wiki.test.raw M=~/.cache/lowbit/models
    lowbit perplexity $M/SmolLM2-135M-Instruct.Q4_1.gguf -f $T -c 512 \\
        --chunks 4 --json -t 2 > lowbit.json
    $P bench/llamacpp_check.py $M/SmolLM2-135M-Instruct.Q4_1.gguf \\
        -f $T -c 512 --chunks 4 --compare-json lowbit.json \\
        --check-ids ../shared/data/wiki.test.smollm2-135m.ids.gz

`--check-ids FILE.ids.gz` compares llama.cpp's token ids for the whole text with a gzipped list
`[id, id, ...]`; a mismatch would make the perplexity comparison meaningless. `--json` prints one
JSON line per file instead of the text report. A file llama.cpp cannot load is reported
(`loaded: false`, the error and llama.cpp's log lines), not raised; the exit status is 1 if a
file failed to load or its token ids differ from `--check-ids`.

llama.cpp's CPU kernels quantize activations (to 8 bits for most weight types), so expect its PPL
to differ from lowbit's float32 activations by a fraction of a percent, not to match exactly
(an all-F32 copy of each real model, which llama.cpp runs without quantizing activations, matched
lowbit within 0.01 %).
"""

import argparse
import gzip
import json
import math
import os
import sys
import time

import llama_cpp
import numpy as np


_LOG = []  # llama.cpp's warnings and errors (ggml_log_level WARN = 3, ERROR = 4), to explain a failed load


@llama_cpp.llama_log_callback
def _log(level, text, user_data):
    if level in (3, 4):
        _LOG.append(text.decode("utf-8", "replace").strip())


llama_cpp.llama_log_set(_log, None)  # replaces llama-cpp-python's logger, which leaks some lines


def nll_of_chunk(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target under the matching row of logits (float64)."""
    out = np.empty(len(targets))
    for i, (row, tok) in enumerate(zip(logits, targets)):  # row by row: vocabularies are big
        x = row.astype(np.float64)
        m = x.max()
        out[i] = m + math.log(np.exp(x - m).sum()) - x[tok]
    return out


def read_ids(path: str) -> list:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def check_file(path: str, text: bytes, args) -> dict:
    rep = {"model": os.path.abspath(path), "llama_cpp_version": llama_cpp.__version__,
           "n_ctx": args.ctx_size, "loaded": False}
    t0 = time.perf_counter()
    _LOG.clear()
    try:
        llm = llama_cpp.Llama(model_path=path, n_ctx=args.ctx_size, n_batch=args.ctx_size,
                              n_ubatch=args.ctx_size, logits_all=True, n_threads=args.threads,
                              n_threads_batch=args.threads, verbose=False)
    except Exception as e:  # a file llama.cpp refuses is a finding, not a crash
        rep["error"] = f"{type(e).__name__}: {e}"
        rep["llama_log"] = _LOG[-3:]
        rep["seconds"] = time.perf_counter() - t0
        return rep
    rep["loaded"] = True
    rep["load_seconds"] = time.perf_counter() - t0

    add_bos = bool(llm._model.add_bos_token())
    bos = llm.token_bos()
    tokens = llm.tokenize(text, add_bos=add_bos, special=False)  # llama_tokenize(add_special=add_bos)
    rep.update(add_bos=add_bos, n_tokens=len(tokens))
    if args.check_ids:
        ref = read_ids(args.check_ids)
        diff = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), None)
        if diff is None and len(ref) != len(tokens):
            diff = min(len(ref), len(tokens))
        rep["ids_match"] = diff is None
        if diff is not None:
            rep["ids_first_mismatch"] = {"index": diff, "llama_cpp": tokens[diff:diff + 5],
                                         "reference": ref[diff:diff + 5],
                                         "n_llama_cpp": len(tokens), "n_reference": len(ref)}

    c = args.ctx_size
    first = c // 2
    n_max = len(tokens) // c
    if len(tokens) < 2 * c:  # llama-perplexity's own requirement
        rep["error"] = f"text has {len(tokens)} tokens, need at least {2 * c} for -c {c}"
        rep["seconds"] = time.perf_counter() - t0
        llm.close()
        return rep
    n_chunks = n_max if args.chunks <= 0 else min(args.chunks, n_max)

    nlls, running = [], []
    t_eval = time.perf_counter()
    for k in range(n_chunks):
        chunk = tokens[k * c:(k + 1) * c]
        batch = list(chunk)
        if add_bos:
            batch[0] = bos
        llm.reset()  # n_tokens = 0 ...
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)  # ... and empty KV
        llm.eval(batch)
        logits = llm.scores[first:c - 1]  # rows predict tokens first+1 .. c-1
        nlls.append(nll_of_chunk(logits, np.asarray(chunk[first + 1:c])))
        running.append(math.exp(np.concatenate(nlls).mean()))
        if not args.json:
            print(f"[{k + 1}]{running[-1]:.4f},", end="\n" if k + 1 == n_chunks else "", flush=True)
    nll = np.concatenate(nlls)
    n = len(nll)
    mean, mean2 = nll.mean(), (nll * nll).mean()
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    rep.update(chunks=n_chunks, scored_tokens=n, ppl=ppl,
               ppl_error=math.sqrt(var / (n - 1)) * ppl if var > 0 else float("nan"),
               running=running, eval_seconds=time.perf_counter() - t_eval,
               seconds=time.perf_counter() - t0)
    llm.close()
    return rep


def lowbit_reports(path: str) -> list:
    """The JSON objects in a file of `lowbit perplexity --json` output (one or more lines)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def match_lowbit(model: str, reports: list, n_files: int):
    for r in reports:
        if os.path.realpath(os.path.expanduser(r.get("model", ""))) == os.path.realpath(model):
            return r
    for r in reports:
        if os.path.basename(r.get("model", "")) == os.path.basename(model):
            return r
    return reports[0] if len(reports) == 1 and n_files == 1 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="GGUF")
    p.add_argument("-f", "--file", required=True, help="text file (e.g. wiki.test.raw)")
    p.add_argument("-c", "--ctx-size", type=int, default=512)
    p.add_argument("--chunks", type=int, default=0, help="chunks to score (0: all)")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--lowbit-ppl", type=float, help="lowbit's PPL to compare with (one file)")
    p.add_argument("--compare-json", metavar="FILE", help="output of `lowbit perplexity --json`")
    p.add_argument("--check-ids", metavar="IDS", help="reference token ids, gzipped `[id, ...]`")
    p.add_argument("--json", action="store_true", help="one JSON line per file")
    args = p.parse_args(argv)
    if args.ctx_size < 4 or args.ctx_size % 2:
        p.error("-c must be an even number >= 4")

    with open(args.file, "rb") as f:  # bytes, as llama-perplexity reads them
        text = f.read()
    reports = lowbit_reports(args.compare_json) if args.compare_json else []

    status = 0
    for path in args.models:
        if not args.json:
            print(f"== {path} (llama-cpp-python {llama_cpp.__version__})", flush=True)
        rep = check_file(path, text, args)
        lb = match_lowbit(rep["model"], reports, len(args.models)) if reports else None
        if lb is not None and "ppl" in rep:
            k, running = rep["chunks"], lb.get("running") or []
            if lb.get("n_ctx") != rep["n_ctx"]:
                rep["warning"] = f"lowbit ran -c {lb.get('n_ctx')}, llama.cpp -c {rep['n_ctx']}: not compared"
            elif lb.get("chunks") == k:
                rep["lowbit_ppl"], rep["lowbit_seconds"] = lb["ppl"], lb.get("seconds")
            elif len(running) >= k:  # lowbit ran more chunks: its running estimate after k
                rep["lowbit_ppl"] = running[k - 1]
                rep["warning"] = f"lowbit ran {lb.get('chunks')} chunks; compared at chunk {k}"
            else:
                rep["warning"] = f"lowbit ran {lb.get('chunks')} chunks, llama.cpp {k}: not compared"
        elif reports and "ppl" in rep:
            rep["warning"] = f"no line of {args.compare_json} is about this file"
        elif args.lowbit_ppl is not None:
            rep["lowbit_ppl"] = args.lowbit_ppl
        if "lowbit_ppl" in rep and "ppl" in rep:
            rep["rel_diff"] = (rep["ppl"] - rep["lowbit_ppl"]) / rep["lowbit_ppl"]
        if not rep["loaded"] or not rep.get("ids_match", True):
            status = 1

        if args.json:
            print(json.dumps(rep), flush=True)
            continue
        if not rep["loaded"]:
            print(f"LOAD FAILED: {rep['error']} ({rep['seconds']:.1f} s)")
            for line in rep["llama_log"]:
                print(f"  llama.cpp: {line}")
            continue
        print(f"loaded in {rep['load_seconds']:.1f} s; {rep['n_tokens']} tokens, "
              f"add_bos={rep['add_bos']}")
        if "ids_match" in rep:
            print("token ids: match the reference" if rep["ids_match"]
                  else f"token ids: MISMATCH {rep['ids_first_mismatch']}")
        if "error" in rep:
            print(f"error: {rep['error']}")
            continue
        print(f"Final estimate: PPL = {rep['ppl']:.4f} +/- {rep['ppl_error']:.5f}")
        print(f"{rep['chunks']} chunks, {rep['scored_tokens']} scored tokens, "
              f"{rep['eval_seconds']:.1f} s eval, {rep['seconds']:.1f} s total")
        if "rel_diff" in rep:
            print(f"lowbit PPL = {rep['lowbit_ppl']:.4f}; llama.cpp - lowbit = "
                  f"{100 * rep['rel_diff']:+.3f} %")
        if "warning" in rep:
            print(f"warning: {rep['warning']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
