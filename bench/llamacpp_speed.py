"""Prompt-processing and generation speed of mainline llama.cpp (through llama-cpp-python), with
the tests `lowbit bench` runs, so the two can be put side by side in one sitting.

Runs under the llama-cpp-python venv, NOT lowbit's (it imports llama_cpp and numpy only):

    $P bench/llamacpp_speed.py FILE [FILE ...] -p 512 -n 128 -t 2 -r 3

Tests, as llama-bench and `lowbit bench` run them:
  ppP  P fixed-seed random token ids (the first one BOS when the model adds BOS) in one decode
       call (n_batch = n_ubatch = P) from an empty KV cache.
  tgN  N tokens one decode call at a time from an empty KV cache (logits computed, nothing
       sampled).
One untimed warm-up run per test, then `reps` timed runs; tokens/s is the mean and sample
standard deviation of the per-run figures. llama-cpp-python's own Python per call (copying the
last row of logits into numpy) is included in tg, as lowbit's Python is in its own figures.
"""

import argparse
import statistics
import sys
import time

import llama_cpp
import numpy as np

SEED = 1234


@llama_cpp.llama_log_callback
def _quiet(level, text, user_data):
    pass


llama_cpp.llama_log_set(_quiet, None)


def run_prompt(llm, tokens) -> float:
    llm.reset()
    llm._ctx.kv_cache_clear()
    start = time.perf_counter()
    llm.eval(tokens)
    return len(tokens) / (time.perf_counter() - start)


def run_generation(llm, tokens) -> float:
    llm.reset()
    llm._ctx.kv_cache_clear()
    start = time.perf_counter()
    for tok in tokens:
        llm.eval([tok])
    return len(tokens) / (time.perf_counter() - start)


def bench_file(path: str, args) -> list:
    llm = llama_cpp.Llama(model_path=path, n_ctx=args.n_prompt + args.n_gen, n_batch=args.n_prompt,
                          n_ubatch=args.n_prompt, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    rng = np.random.default_rng(SEED)
    n_vocab = llm.n_vocab()
    bos = llm.token_bos() if llm._model.add_bos_token() else None
    rows = []
    for name, count, runner in (("pp", args.n_prompt, run_prompt), ("tg", args.n_gen, run_generation)):
        if count <= 0:
            continue
        ids = [int(t) for t in rng.integers(0, n_vocab, size=count)]
        if bos is not None:
            ids[0] = bos
        runner(llm, ids)  # warm-up
        speeds = [runner(llm, ids) for _ in range(args.reps)]
        sd = statistics.stdev(speeds) if len(speeds) > 1 else 0.0
        rows.append((f"{name}{count}", statistics.mean(speeds), sd))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, {args.reps} runs after a warm-up")
    print("| file | test | t/s |")
    print("|---|---|---:|")
    for path in args.files:
        for test, mean, sd in bench_file(path, args):
            print(f"| {path.rsplit('/', 1)[-1]} | {test} | {mean:.2f} ± {sd:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
