"""Copy a quantized GGUF with every 256-weight block's super-scale(s) multiplied by one factor,
the codes untouched: an experiment on the gain of a quantized model, not a quantizer.

    python bench/rescale_scales.py SOURCE QUANTIZED OUT IMATRIX [--target ls|unbiased] [--per-row]
        [--factor F]
        [--types T1,T2] [--only REGEX]

SOURCE is the model QUANTIZED was made from (a lowbit model name or a GGUF path), IMATRIX the
importance matrix. For each block of a listed type, with w the importance, x the source weights
and q the quantized ones, the block's importance-weighted projection <q,x>_w / <x,x>_w is set to
   ls        <q,x>_w^2 / (<x,x>_w <q,q>_w): the least-squares scale (smallest weighted error,
             the row shrunk toward zero by its relative error)
   unbiased  1
(--factor F instead: every block's scale times F, whatever its projection.)
(--per-row: one factor per row instead of per block). It prints each tensor's mean projection
and relative weighted error before -> after. docs/encoders.md uses it on llama-quantize's IQ2_XXS
file of Qwen2.5-Coder-1.5B: the same codes at the least-squares scales read a higher KLD.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil

import numpy as np
from compare_encodings import spread

from lowbit.eval.model_store import resolve_model
from lowbit.quant import imatrix as imx
from lowbit.quant.decode import dequantize
from lowbit.quant.gguffile import open_gguf

# byte offsets of the f16 super-scale(s) in a block of 256 weights: all are scaled together
SCALE_AT = {"IQ1_S": [0], "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0],
            "IQ3_S": [0], "IQ4_XS": [0], "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2],
            "Q5_K": [0, 2], "Q6_K": [208]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source")
    p.add_argument("quantized")
    p.add_argument("out")
    p.add_argument("imatrix")
    p.add_argument("--target", choices=["ls", "unbiased"], default="ls")
    p.add_argument("--factor", type=float, help="multiply every scale by this instead of --target")
    p.add_argument("--per-row", action="store_true")
    p.add_argument("--types", default=",".join(SCALE_AT), help="the types to rescale")
    p.add_argument("--only", help="rescale only the tensors whose names match this regex")
    a = p.parse_args(argv)
    types = set(a.types.split(","))
    partial = a.out + ".partial"
    try:
        shutil.copyfile(a.quantized, partial)
        src = open_gguf(resolve_model(a.source))
        q = open_gguf(partial)
        im = imx.load(a.imatrix)
        mm = np.memmap(partial, dtype=np.uint8, mode="r+")
        for name, t in q.tensors.items():
            if t.qtype.name not in types or (a.only and not re.search(a.only, name)):
                continue
            st = src.tensors[name]
            x = dequantize(src.raw(name), st.qtype, st.shape).reshape(-1, t.n_cols).astype(np.float64)
            raw = np.array(q.raw(name)).reshape(x.shape[0], -1)
            y = dequantize(raw, t.qtype, x.shape).astype(np.float64)
            imp = im.importance(name)
            imp = np.ones(t.n_cols) if imp is None else imp.astype(np.float64)
            nb = t.n_cols // 256
            xb, yb, wb = x.reshape(-1, nb, 256), y.reshape(-1, nb, 256), imp.reshape(nb, 256)
            sxx, sxq, sqq = ((wb * xb * xb).sum(-1), (wb * xb * yb).sum(-1), (wb * yb * yb).sum(-1))
            if a.per_row:
                sxx, sxq, sqq = (np.repeat(v.sum(-1, keepdims=True), nb, -1) for v in (sxx, sxq, sqq))
            ok = (sxq > 0) & (sqq > 0) & (sxx > 0)
            sxx_, sqq_ = np.where(ok, sxx, 1), np.where(ok, sqq, 1)
            proj = np.where(ok, sxq / sxx_, 1.0)
            target = np.where(ok, sxq ** 2 / (sxx_ * sqq_), 1.0) if a.target == "ls" else 1.0
            f = np.where(ok, target / proj, 1.0) if a.factor is None else np.full(proj.shape, a.factor)
            blocks = raw.reshape(-1, nb, t.qtype.type_size)
            for at in SCALE_AT[t.qtype.name]:
                d = blocks[:, :, at:at + 2].copy().view(np.float16)[..., 0].astype(np.float32)
                blocks[:, :, at:at + 2] = (d * f).astype(np.float16)[..., None].view(np.uint8)
            mm[t.offset:t.offset + t.n_bytes] = blocks.reshape(-1)
            y2 = dequantize(blocks.reshape(x.shape[0], -1), t.qtype, x.shape).astype(np.float64)
            before, after = spread(x, y, imp), spread(x, y2, imp)
            print(f"{name:28s} {t.qtype.name:8s} projection {before['proj']:.3f} -> {after['proj']:.3f}  "
                  f"relative error {before['err_w']:.4f} -> {after['err_w']:.4f}", flush=True)
        mm.flush()
        del mm
        os.replace(partial, a.out)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)     # no half-rescaled copy left behind
        raise


if __name__ == "__main__":
    main()
