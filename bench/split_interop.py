"""Split GGUF files between lowbit and llama.cpp, both ways, checked with llama.cpp's own tools.

    python bench/split_interop.py MODEL --type Q4_K_M --split-max-size 40M \\
        --llama-bin LLAMA_CPP_BIN_DIR --text wiki.test.raw --work DIR [--chunks 4] [-t 2]

1. lowbit quantizes MODEL to TYPE twice: whole (whole.gguf) and split (lowbit-0000i-of-0000N.gguf).
2. llama-gguf-split --split splits whole.gguf by the same limit (llamacpp-0000i-of-0000N.gguf):
   the shards are compared byte for byte with lowbit's.
3. llama-gguf-split --merge joins lowbit's shards (merged.gguf): every tensor must equal whole.gguf's.
4. llama-perplexity loads lowbit's first shard and whole.gguf: the same perplexity.
5. lowbit perplexity reads llama.cpp's first shard and whole.gguf: the same perplexity.
A Markdown report (commands and results) is printed; the exit status is 1 if a check fails.
The files are left in DIR.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from lowbit.quant.gguffile import open_gguf


SHOWN = {}   # long paths -> the names the report shows for them


def run(cmd: list[str], log: list[str]) -> str:
    shown = " ".join(cmd)
    for path, name in SHOWN.items():
        shown = shown.replace(path, name)
    log.append("    " + shown)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{(p.stderr or p.stdout)[-2000:]}")
    return p.stdout + p.stderr


def shards(prefix: Path) -> list[Path]:
    return sorted(prefix.parent.glob(prefix.name + "-*-of-*.gguf"))


def llama_ppl(out: str) -> float:
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if not m:
        raise SystemExit("llama-perplexity printed no final estimate")
    return float(m.group(1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--type", default="Q4_K_M")
    p.add_argument("--split-max-size", default="40M")
    p.add_argument("--llama-bin", type=Path, required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args(argv)
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    lowbit = [sys.executable, "-m", "lowbit.eval.cli"]
    SHOWN.update({" ".join(lowbit): "lowbit", f"{args.llama_bin}/": "", f"{w}/": "", args.text: Path(args.text).name})
    log: list[str] = []
    checks: list[tuple[str, bool, str]] = []
    whole = w / "whole.gguf"
    for f in [whole, *shards(w / "lowbit"), *shards(w / "llamacpp"), w / "merged.gguf"]:
        f.unlink(missing_ok=True)

    def quantize(out: Path, *extra: str) -> None:
        run([*lowbit, "quantize", args.model, str(out), args.type, "--allow-requantize", "-t", str(args.threads),
             *extra], log)

    quantize(whole)
    quantize(w / "lowbit.gguf", "--split-max-size", args.split_max_size)
    ours = shards(w / "lowbit")
    run([str(args.llama_bin / "llama-gguf-split"), "--split", "--split-max-size", args.split_max_size,
         str(whole), str(w / "llamacpp")], log)
    theirs = shards(w / "llamacpp")
    same = len(ours) == len(theirs) and all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs))
    checks.append(("lowbit's shards equal llama-gguf-split's, byte for byte", same,
                   f"{len(ours)} and {len(theirs)} shards"))

    run([str(args.llama_bin / "llama-gguf-split"), "--merge", str(ours[0]), str(w / "merged.gguf")], log)
    a, b = open_gguf(whole), open_gguf(w / "merged.gguf")
    equal = list(a.tensors) == list(b.tensors) and all(np.array_equal(a.raw(n), b.raw(n)) for n in a.tensors)
    checks.append(("llama-gguf-split --merge of lowbit's shards: every tensor equals the whole file's", equal,
                   f"{len(b.tensors)} tensors"))

    ppl = [args.llama_bin / "llama-perplexity", "-f", args.text, "-c", "512", "--chunks", str(args.chunks),
           "-t", str(args.threads)]
    lc = {f.name: llama_ppl(run([str(x) for x in ppl] + ["-m", str(f)], log)) for f in (ours[0], whole)}
    checks.append(("llama-perplexity loads lowbit's split file: PPL as the whole file", len(set(lc.values())) == 1,
                   ", ".join(f"{k}: {v:.4f}" for k, v in lc.items())))

    lb = {}
    for f in (theirs[0], whole):
        out = run([*lowbit, "perplexity", str(f), "-f", args.text, "-c", "512", "--chunks", str(args.chunks),
                   "-t", str(args.threads), "--json"], log)
        lb[f.name] = json.loads(out.strip().splitlines()[-1])["ppl"]
    checks.append(("lowbit reads llama-gguf-split's files: PPL as the whole file", len(set(lb.values())) == 1,
                   ", ".join(f"{k}: {v:.4f}" for k, v in lb.items())))

    print(f"{Path(args.model).name} -> {args.type}, shards of at most {args.split_max_size} "
          f"({args.chunks} chunks of 512 tokens for perplexity)\n")
    print("\n".join(log) + "\n")
    print("| check | result | detail |\n|---|---|---|")
    for what, ok, detail in checks:
        print(f"| {what} | {'yes' if ok else 'NO'} | {detail} |")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
