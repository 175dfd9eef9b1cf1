"""What LLVM made of the hot loops: instruction counts of the integer kernel, the float
kernels, the attention and the activation quantizer, compiled fresh (a temporary numba cache:
cached code cannot be inspected).

    python bench/inspect_asm.py [--type Q4_K] [--planes 3] [--tokens 5] [--float F16] [--show-loop]

Prints, per function, the vector instructions by count (zmm = 512-bit), and with --show-loop
the innermost basic block that holds the most vpdpbusd / vfmadd instructions. --tokens 1 runs
the kernel once with one token (the generation path: steps decoded in registers); any count
compiles both paths, but the hottest block then is the token-tiled loop.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections import Counter

os.environ["LOWBIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="lowbit-asm-")

import numpy as np  # noqa: E402

from lowbit.quant.types import by_name  # noqa: E402
from lowbit.runtime.kernels import floats  # noqa: E402
from lowbit.runtime.kernels.attention import attention_kernel, cache_length  # noqa: E402
from lowbit.runtime.kernels.layout import GROUP, layout_of  # noqa: E402
from lowbit.runtime.kernels.packed import packed_kernel, quantizer  # noqa: E402


def blocks(asm: str):
    """Basic blocks: (label, [instruction lines])."""
    out, label, body = [], "entry", []
    for line in asm.splitlines():
        m = re.match(r"^(\.LBB\w+):", line)
        if m:
            out.append((label, body))
            label, body = m.group(1), []
        elif line.startswith("\t") and not line.strip().startswith("."):
            body.append(line.strip())
    out.append((label, body))
    return out


def summary(name, asm, show_loop, hot=("vpdpbusd", "vfmadd231ps")):
    ins = [line.split()[0] for _, body in blocks(asm) for line in body]
    vec = Counter(i for i in ins if i.startswith("v"))
    zmm = sum(1 for _, body in blocks(asm) for line in body if "zmm" in line)
    print(f"\n{name}: {len(ins)} instructions, {zmm} on zmm registers; vector instructions by count:")
    print("  " + ", ".join(f"{k} {v}" for k, v in vec.most_common(14)))
    if show_loop:
        label, body = max(blocks(asm), key=lambda b: sum(1 for line in b[1] if line.split()[0] in hot))
        print(f"  hottest block {label} ({len(body)} instructions):")
        for line in body[:60]:
            print("    " + line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--type", default="Q4_K", help="a quantized type: its layout's kernel")
    p.add_argument("--planes", type=int, default=3)
    p.add_argument("--tokens", type=int, default=5)
    p.add_argument("--float", default="F16", choices=sorted(floats.FORMATS), help="the float kernels' weight type")
    p.add_argument("--show-loop", action="store_true")
    args = p.parse_args(argv)
    lay = layout_of(by_name(args.type))
    k = packed_kernel(lay.kernel_key, args.planes)
    n_cols, groups, n_tokens = 256, 2, args.tokens
    q = np.zeros((groups, n_cols // lay.block * lay.block_bytes), np.uint8)
    offs = np.zeros(groups * GROUP, np.float32)
    qx = np.zeros((args.planes, n_tokens * n_cols), np.int8)
    dx = np.zeros(n_tokens * n_cols // 32, np.float32)
    isum = np.zeros((2, n_tokens * n_cols // 16), np.int32)
    out = np.zeros(n_tokens * groups * GROUP, np.float32)
    k(q, offs, qx, dx, isum, n_tokens, groups * GROUP, out)
    summary(f"integer kernel ({args.type}: {lay.weights.name} weights, {lay.scales.name} scales, sub-block "
            f"{lay.sub}, {args.planes} planes)", k.inspect_asm(k.signatures[0]), args.show_loop)

    fmt = floats.FORMATS[args.float]
    w = np.zeros((48, 256), np.float32 if args.float == "F32" else np.uint16)
    xs = np.zeros((40, 256), np.float32)
    floats.matmul(w, fmt, xs, np.zeros((40, 48), np.float32))
    floats.matvec(w, fmt, xs[0], np.zeros(48, np.float32))
    mm = floats.matmul_kernel(fmt, 2)
    summary(f"float matrix-matrix kernel ({args.float}, 12 rows x 32 tokens)", mm.inspect_asm(mm.signatures[0]),
            args.show_loop, hot=("vfmadd231ps",))
    mv = floats.matvec_kernel(fmt)
    summary(f"float matrix-vector kernel ({args.float})", mv.inspect_asm(mv.signatures[0]), args.show_loop,
            hot=("vfmadd231ps",))

    a = attention_kernel(False)
    na = cache_length(64)
    z = np.zeros
    a(z(8 * 64, np.float32), z(2 * 64 * na, np.float32), z(2 * 64 * na, np.float32), 2, 4, 64, 2, na, 10, 0.1, 0,
      z(8 * 64, np.float32))
    summary("attention", a.inspect_asm(a.signatures[0]), args.show_loop)

    f = quantizer(args.planes, False)
    x = z((2, 64), np.float32)
    f(x, z((args.planes, 128), np.int8), z(4, np.float32), z((2, 8), np.int32))
    summary(f"activation quantizer ({args.planes} planes)", f.inspect_asm(f.signatures[0]), args.show_loop,
            hot=("vrndscaleps",))


if __name__ == "__main__":
    main()
