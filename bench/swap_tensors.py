"""Copy a quantized GGUF with some tensors' bytes taken from a second file of the same plan: which
kind of matrix makes one quantizer's file read worse than another's (docs/encoders.md).

    python bench/swap_tensors.py BASE DONOR OUT --only REGEX

BASE and DONOR must hold every tensor the regex names with the same type and size (two files of
one preset of one model, made by different quantizers); the output is BASE with those tensors'
bytes from DONOR. Measure it with `lowbit perplexity OUT ... --kl-divergence`.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

from lowbit.quant.gguffile import open_gguf


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("donor")
    p.add_argument("out")
    p.add_argument("--only", required=True, help="swap the tensors whose names match this regex")
    args = p.parse_args(argv)
    pattern = re.compile(args.only)
    base, donor = open_gguf(args.base), open_gguf(args.donor)
    names = [n for n in base.tensors if pattern.search(n)]
    if not names:
        sys.exit(f"no tensor of {args.base} matches {args.only!r}")
    for name in names:
        a, b = base.tensors[name], donor.tensors.get(name)
        if b is None or (a.qtype, a.n_bytes) != (b.qtype, b.n_bytes):
            sys.exit(f"{name} is not of the same type and size in both files")
    tmp = args.out + ".part"
    shutil.copyfile(args.base, tmp)
    with open(tmp, "r+b") as f:
        for name in names:
            f.seek(base.tensors[name].offset)
            f.write(donor.raw(name).tobytes())
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(names)} tensors from {args.donor}")


if __name__ == "__main__":
    main()
