"""The layers' weight matrices encoded with Hessian error feedback (quant/gptq.py),
sequentially, each layer seeing the already quantized layers before it (bench/gptq_trial.py
runs it; not a `lowbit quantize` option yet: on SmolLM2 it lowers every matrix's held-out
output error and still reads worse than plain encoding, docs/beyond-imatrix.md).

The calibration chunks' residual streams are kept (tokens x n_embd float32 each) and advanced
one layer at a time, so every layer runs twice over them in all: once, unquantized, to
accumulate per input its matrices read H = X^T X (q/k/v share one, gate/up share one;
attn_output and ffn_down have their own: 8960^2 x 8 bytes = 640 MB for Qwen2.5-1.5B's
ffn_down, the largest held at once), separately over the fitted chunks and over held-out
chunks that follow them in the text; and once more with its matrices quantized, to make the
next layer's inputs (so each layer sees the quantized layers before it). Each matrix is encoded
both plainly and with feedback, and the one with the lower output error on the held-out inputs
is kept (so the method never makes a matrix worse on data it did not fit), saved to the work
directory, and swapped into the model. Memory: one layer's Hessians, the streams and the
model; time: two forward passes over the calibration chunks plus the encodings and the
factorizations.

The encoded matrices are handed to quantize_model as precomputed tensors; everything else
(embedding, output, norms, tensors that keep the source's type) goes the plain way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lowbit.quant.decode import dequantize
from lowbit.quant.errors import LowbitError
from lowbit.quant.gptq import gptq_quantize, output_error
from lowbit.quant.imatrix import ImportanceMatrix
from lowbit.quant.score_gain import quantize_tensor_rows

from .perplexity import chunk_tokens

DAMP = 0.01              # of mean(diag H): the original method's choice


class GPTQPassError(LowbitError):
    """Calibration text too short for the chunks asked for."""


@dataclass
class MatrixReport:
    name: str
    qtype: str
    plain_error: float       # held-out output error, plain encoding
    gptq_error: float        # held-out output error, with feedback
    kept: str                # "gptq" or "plain"

    @property
    def ratio(self) -> float:
        return self.gptq_error / self.plain_error if self.plain_error else 1.0


class HessianSum:
    """X^T X and the rows summed, for the inputs one observer sees. Each batch's product is
    taken in float32 (a 512-token chunk: error ~1e-7 relative) and summed in float64, half the
    time of a float64 product on the 8960-wide inputs. per_token: each token's input scaled to
    unit mean square first, so that the few tokens with huge activations (a chunk's first,
    some punctuation) do not decide the sum alone."""

    def __init__(self, per_token: bool = False):
        self.h = None
        self.n = 0
        self.per_token = per_token

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if self.per_token:
            x = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True, dtype=np.float64) + 1e-12).astype(np.float32)
        xtx = (x.T @ x).astype(np.float64)
        if self.h is None:
            self.h = xtx
        else:
            self.h += xtx
        self.n += x.shape[0]


def _inputs(layer):
    """The layer's matrices grouped by the activations they read, the observed one first."""
    return [[layer.wq, layer.wk, layer.wv], [layer.wo], [layer.w_gate, layer.w_up], [layer.w_down]]


def _hessians(model, layer_index: int, streams: list[np.ndarray], n_fit: int, per_token: bool
              ) -> tuple[list[HessianSum], list[HessianSum]]:
    """Run the layer on (copies of) the residual streams entering it; the Hessian of each input
    group over the first n_fit streams and over the rest (held out)."""
    layer = model.layers[layer_index]
    groups = _inputs(layer)
    fit, held = [HessianSum(per_token) for _ in groups], [HessianSum(per_token) for _ in groups]
    try:
        for i, x in enumerate(streams):
            for group, s in zip(groups, fit if i < n_fit else held):
                group[0].observer = s.add
            model.run_layer(layer_index, x.copy())
    finally:
        for group in groups:
            group[0].observer = None
    return fit, held


def _encode_matrix(name: str, src, qtype, hf: HessianSum, hh: HessianSum, im: ImportanceMatrix | None,
                   damp: float) -> tuple[MatrixReport, np.ndarray]:
    """One matrix encoded plainly (as quantize_model encodes it) and with feedback through hf;
    the one with the lower output error over the held-out inputs hh, and the report."""
    t = src.tensors[name]
    w = dequantize(src.raw(name), t.qtype, (t.n_rows, t.n_cols))
    imp = im.importance(name) if im is not None else None
    if imp is None:
        imp = (np.diagonal(hf.h) / hf.n).astype(np.float32)
    plain = quantize_tensor_rows(name, w, qtype, imp)
    improved = gptq_quantize(w, qtype, hf.h, hf.n, importance=imp, damp=damp)
    e_plain, e_gptq = output_error(w, plain, qtype, hh.h), output_error(w, improved, qtype, hh.h)
    kept = "gptq" if e_gptq < e_plain else "plain"
    return MatrixReport(name, qtype.name, e_plain, e_gptq, kept), improved if kept == "gptq" else plain


def gptq_pass(model, tokenizer, src, types: dict[str, object], text: str, n_ctx: int, n_chunks: int,
              n_held_out: int, work_dir: Path, im: ImportanceMatrix | None = None, damp: float = DAMP,
              per_token: bool = False, stage: Callable[[str], None] = lambda s: None
              ) -> tuple[dict[str, Path], list[MatrixReport]]:
    """Encode every layer matrix whose planned type (types: name -> QuantType) differs from the
    source's; (name -> .npy file of its bytes, one report per matrix)."""
    from lowbit.runtime.kernels import QuantMatrix

    bos = tokenizer.bos_id if tokenizer.add_bos else None
    chunks = chunk_tokens(tokenizer.encode(text, add_special=True), n_ctx, n_chunks + n_held_out, bos)
    if len(chunks) < n_chunks + n_held_out:
        raise GPTQPassError(f"the calibration text holds {len(chunks)} chunks of {n_ctx} tokens; --gptq needs "
                            f"{n_chunks} to fit and {n_held_out} held out")
    # the residual stream of every chunk entering the current layer: layer 0's is the embedding,
    # and after each layer is encoded the streams go through it (quantized) once
    streams = [np.ascontiguousarray(model.embed(c), dtype=np.float32) for c in chunks]
    files, reports = {}, []
    for il, layer in enumerate(model.layers):
        todo = [lin for group in _inputs(layer) for lin in group
                if lin.name in types and types[lin.name].name != src.tensors[lin.name].qtype.name]
        if todo:
            stage(f"layer {il}: Hessians")
            h_fit, h_held = _hessians(model, il, streams, n_chunks, per_token)
            for group, hf, hh in zip(_inputs(layer), h_fit, h_held):
                for lin in group:
                    if lin in todo:
                        stage(f"layer {il}: {lin.name}")
                        report, kept = _encode_matrix(lin.name, src, types[lin.name], hf, hh, im, damp)
                        reports.append(report)
                        path = work_dir / f"{lin.name}.npy"
                        np.save(path, kept)
                        files[lin.name] = path
                        t = src.tensors[lin.name]
                        model.swap_matrix(lin.name, QuantMatrix(kept, types[lin.name], t.n_rows, t.n_cols, lin.name))
            del h_fit, h_held
        for x in streams:
            model.run_layer(il, x)
    return files, reports
