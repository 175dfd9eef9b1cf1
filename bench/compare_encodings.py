"""Two quantized files of one model, tensor by tensor: how each encoding's error is spread.

    python bench/compare_encodings.py SOURCE IMATRIX A.gguf B.gguf TENSOR [TENSOR ...]

SOURCE is the model both were made from (a lowbit model name or a GGUF path). For each tensor
and file, with x the source rows, q the quantized ones and w the importance: the mean and spread
over rows of the projection <q,x>_w / <x,x>_w; the relative error weighted by w, by
w sqrt(RMS^2 + x^2) (RMS of the row; the weighting of ggml's i-quant searches) and unweighted;
and the relative error and projection of the large weights alone (|x| > 2.5 RMS of the row).
"""
from __future__ import annotations

import argparse

import numpy as np

from lowbit.eval.model_store import resolve_model
from lowbit.quant import imatrix as imx
from lowbit.quant.decode import dequantize
from lowbit.quant.gguffile import open_gguf

LARGE = 2.5   # a weight is large above this many RMS of its row


def spread(x, q, w):
    """The measures of one encoding q of rows x under importance w (see the module doc)."""
    sig2 = (x * x).mean(1, keepdims=True)
    d2 = (x - q) ** 2
    xx = (w * x * x).sum(1)
    proj = (w * x * q).sum(1) / xx
    ggml_w = w * np.sqrt(sig2 + x * x)
    big = np.abs(x) > LARGE * np.sqrt(sig2)
    big_xx = (w * x * x * big).sum(1)
    has_big = big_xx > 0
    return {"proj": proj.mean(), "proj_sd": proj.std(),
            "err_w": (w * d2).sum() / xx.sum(),
            "err_ggml_w": (ggml_w * d2).sum() / (ggml_w * x * x).sum(),
            "err_plain": d2.sum() / (x * x).sum(),
            "err_large": (w * d2 * big).sum() / big_xx.sum(),
            "proj_large": ((w * q * x * big).sum(1)[has_big] / big_xx[has_big]).mean()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source")
    p.add_argument("imatrix")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("tensors", nargs="+")
    args = p.parse_args(argv)
    src = open_gguf(resolve_model(args.source))
    files = [(path, open_gguf(path)) for path in (args.a, args.b)]
    im = imx.load(args.imatrix)
    print("| tensor | file | projection (row spread) | rel. error, w | rel. error, w sqrt(RMS^2 + x^2) "
          "| rel. error, unweighted | rel. error of the large weights | projection of the large weights |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.tensors:
        st = src.tensors[name]
        x = dequantize(src.raw(name), st.qtype, st.shape).astype(np.float64)
        imp = im.importance(name)
        w = np.ones(x.shape[1]) if imp is None else imp.astype(np.float64)
        for path, f in files:
            t = f.tensors[name]
            m = spread(x, dequantize(f.raw(name), t.qtype, t.shape).astype(np.float64), w)
            print(f"| {name} | {path} | {m['proj']:.3f} +- {m['proj_sd']:.3f} | {m['err_w']:.4f} "
                  f"| {m['err_ggml_w']:.4f} | {m['err_plain']:.4f} | {m['err_large']:.4f} "
                  f"| {m['proj_large']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
