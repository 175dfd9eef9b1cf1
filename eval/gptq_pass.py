"""The layers' weight matrices encoded with Hessian error feedback (quant/gptq.py),
sequentially, each layer seeing the already quantized layers before it (bench/gptq_trial.py
runs it; not a `lowbit quantize` option yet: on SmolLM2 it lowers every matrix's held-out
output error and still reads worse than plain encoding, docs/beyond-imatrix.md).

For layer 0, 1, ...: run the calibration chunks through the model up to that layer (its
earlier layers already replaced by their quantized versions) and accumulate, per input the
layer's matrices read, H = X^T X in float64 (q/k/v share one, gate/up share one; attn_output
and ffn_down have their own: 8960^2 x 8 bytes = 640 MB for Qwen2.5-1.5B's ffn_down, the
largest held at once), and the same over held-out chunks that follow them in the text. Then
each matrix is encoded both plainly and with feedback, and the one with the lower output error
on the held-out inputs is kept (so the method never makes a matrix worse on data it did not
fit), saved to the work directory, and swapped into the model for the layers that follow.
Memory: one layer's Hessians and the model; time: the forward passes grow with the layer
(about half a full pass per layer on average) plus the encodings.

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
    """X^T X and the rows summed, for the inputs one observer sees. per_token: each token's
    input scaled to unit mean square first, so that the few tokens with huge activations (a
    chunk's first, some punctuation) do not decide the sum alone."""

    def __init__(self, per_token: bool = False):
        self.h = None
        self.n = 0
        self.per_token = per_token

    def add(self, name: str, x: np.ndarray) -> None:
        x64 = np.asarray(x, dtype=np.float64)
        if self.per_token:
            x64 = x64 / np.sqrt(np.mean(x64 * x64, axis=1, keepdims=True) + 1e-12)
        self.h = x64.T @ x64 if self.h is None else self.h + x64.T @ x64
        self.n += x.shape[0]


def _inputs(layer):
    """The layer's matrices grouped by the activations they read, the observed one first."""
    return [[layer.wq, layer.wk, layer.wv], [layer.wo], [layer.w_gate, layer.w_up], [layer.w_down]]


def _hessians(model, layer_index: int, chunks: list[np.ndarray], per_token: bool) -> list[HessianSum]:
    """Run the chunks through layers 0..layer_index; the Hessian of each input group."""
    layer = model.layers[layer_index]
    sums = [HessianSum(per_token) for _ in _inputs(layer)]
    for group, s in zip(_inputs(layer), sums):
        group[0].observer = s.add
    try:
        for chunk in chunks:
            model._forward(chunk, model.new_cache(len(chunk)), len(chunk) - 1, model.layers[:layer_index + 1])
    finally:
        for group in _inputs(layer):
            group[0].observer = None
    return sums


def gptq_pass(model, tokenizer, src, types: dict[str, object], text: str, n_ctx: int, n_chunks: int,
              n_held_out: int, work_dir: Path, im: ImportanceMatrix | None = None, damp: float = DAMP,
              per_token: bool = False, stage: Callable[[str], None] = lambda s: None
              ) -> tuple[dict[str, Path], list[MatrixReport]]:
    """Encode every layer matrix whose planned type (types: name -> QuantType) differs from the
    source's; (name -> .npy file of its bytes, one report per matrix)."""
    from lowbit.runtime.kernels import QuantMatrix
    from lowbit.runtime.threads import threads_for_forward

    bos = tokenizer.bos_id if tokenizer.add_bos else None
    chunks = chunk_tokens(tokenizer.encode(text, add_special=True), n_ctx, n_chunks + n_held_out, bos)
    if len(chunks) < n_chunks + n_held_out:
        raise GPTQPassError(f"the calibration text holds {len(chunks)} chunks of {n_ctx} tokens; --gptq needs "
                            f"{n_chunks} to fit and {n_held_out} held out")
    fit, held = chunks[:n_chunks], chunks[n_chunks:]
    files, reports = {}, []
    for il, layer in enumerate(model.layers):
        todo = [lin for group in _inputs(layer) for lin in group
                if lin.name in types and types[lin.name].name != src.tensors[lin.name].qtype.name]
        if not todo:
            continue
        stage(f"layer {il}: Hessians")
        with threads_for_forward():
            h_fit = _hessians(model, il, fit, per_token)
            h_held = _hessians(model, il, held, per_token)
        for group, hf, hh in zip(_inputs(layer), h_fit, h_held):
            for lin in group:
                if lin not in todo:
                    continue
                stage(f"layer {il}: {lin.name}")
                qtype = types[lin.name]
                t = src.tensors[lin.name]
                w = dequantize(src.raw(lin.name), t.qtype, (t.n_rows, t.n_cols))
                imp = im.importance(lin.name) if im is not None else None
                if imp is None:
                    imp = (np.diagonal(hf.h) / hf.n).astype(np.float32)
                plain = quantize_tensor_rows(lin.name, w, qtype, imp)   # as quantize_model encodes it
                improved = gptq_quantize(w, qtype, hf.h, hf.n, importance=imp, damp=damp)
                e_plain, e_gptq = output_error(w, plain, qtype, hh.h), output_error(w, improved, qtype, hh.h)
                kept = improved if e_gptq < e_plain else plain
                reports.append(MatrixReport(lin.name, qtype.name, e_plain, e_gptq,
                                            "gptq" if e_gptq < e_plain else "plain"))
                path = work_dir / f"{lin.name}.npy"
                np.save(path, kept)
                files[lin.name] = path
                model.swap_matrix(lin.name, QuantMatrix(kept, qtype, t.n_rows, t.n_cols, lin.name))
        del h_fit, h_held
    return files, reports
