"""The layers' weight matrices encoded with calibration activations: Hessian error feedback
(quant/gptq.py) and/or activation-aware scales folded into the norms and matrices before them
(quant/awq.py), sequentially, each layer seeing the already quantized layers before it
(`lowbit quantize --gptq/--awq`, `lowbit ladder --methods`, bench/gptq_trial.py;
docs/beyond-imatrix.md).

The calibration chunks' residual streams are kept (tokens x n_embd float32 each) and advanced
one layer at a time, so every layer runs twice over them in all: once, unquantized, to
accumulate per input its matrices read H = X^T X over the fitted chunks (q/k/v share one,
gate/up share one; attn_output and ffn_down have their own: 8960^2 x 8 bytes = 640 MB for
Qwen2.5-1.5B's ffn_down, the largest held at once) and to keep the inputs of the held-out
chunks that follow them in the text (as rows while they are fewer than the columns: errors over
the rows then cost less than over their H); and once more with its matrices quantized, to make
the next layer's inputs (so each layer sees the quantized layers before it). Each matrix is encoded
both plainly and with feedback, and the one with the lower output error on the held-out inputs
is kept (so the method never makes a matrix worse on data it did not fit), saved to the work
directory, and swapped into the model. Activation-aware scales are searched first, one group
of matrices at a time (quant/awq.SCALE_GROUPS), and kept only if they also lower the sampled
rows' output error on the held-out inputs; a group takes part only if every matrix it scales
is re-encoded anyway (a matrix copied from the source in its own type cannot change).
Memory: one layer's Hessians, the streams and the model; time: two forward passes over the
calibration chunks plus the encodings and the factorizations.

The encoded matrices are handed to quantize_model as precomputed tensors; everything else
(embedding, output, norms, tensors that keep the source's type) goes the plain way.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from lowbit.quant import awq
from lowbit.quant.decode import dequantize
from lowbit.quant.errors import LowbitError
from lowbit.quant.gptq import InputRows, gptq_quantize, output_error
from lowbit.quant.imatrix import ImportanceMatrix
from lowbit.quant.score_gain import encode_at_gain, is_score_matrix, quantize_tensor_rows

from .perplexity import chunk_tokens

DAMP = 0.01              # of mean(diag H): the original method's choice


class LayerPassError(LowbitError):
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


@dataclass
class ScaleReport:
    layer: int
    matrices: str            # the scaled matrices, e.g. "attn_q,attn_k,attn_v"
    alpha: float             # 0: not scaled
    held_out_ratio: float    # sampled rows' held-out output error, scaled / plain
    note: str = ""


class HessianSum:
    """X^T X and the rows summed, for the inputs one observer sees. Each batch's product is
    taken in float32 (a 512-token chunk: error ~1e-7 relative) and summed in float64, half the
    time of a float64 product on the 8960-wide inputs. per_token: each token's input scaled to
    unit mean square first, so that the few tokens with huge activations (a chunk's first,
    some punctuation) do not decide the sum alone."""

    def __init__(self, per_token: bool = False):
        self.h = None
        self.n = 0
        self.abs_sum = None        # sum of |x| per channel (the scales' statistic), unscaled
        self.per_token = per_token

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        a = np.abs(x).sum(axis=0, dtype=np.float64)
        self.abs_sum = a if self.abs_sum is None else self.abs_sum + a
        x = _token_scaled(x, self.per_token)
        xtx = x.T @ x
        if self.h is None:
            self.h = xtx.astype(np.float64)
        else:
            self.h += xtx          # cast to float64 as it is added, without a converted copy
        self.n += x.shape[0]


def _token_scaled(x: np.ndarray, per_token: bool) -> np.ndarray:
    """Each token's input scaled to unit mean square (per_token), or x as it is."""
    if not per_token:
        return x
    return x / np.sqrt(np.mean(x * x, axis=1, keepdims=True, dtype=np.float64) + 1e-12).astype(np.float32)


class HeldOutInputs:
    """The held-out inputs one observer sees, for output errors only: `h` is InputRows X (the
    rows themselves) while there are fewer tokens than columns, where errors over the rows cost
    less than over X^T X and H need not be formed; else H. per_token as in HessianSum."""

    def __init__(self, per_token: bool = False):
        self.rows = []
        self.per_token = per_token

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)   # the model reuses its buffers: keep a copy
        self.rows.append(_token_scaled(x, True) if self.per_token else x.copy())

    @cached_property
    def h(self):
        x = np.concatenate(self.rows)
        self.rows = []
        return InputRows(x) if x.shape[0] < x.shape[1] else (x.T @ x).astype(np.float64)


def _inputs(layer):
    """The layer's matrices grouped by the activations they read, the observed one first."""
    return [[layer.wq, layer.wk, layer.wv], [layer.wo], [layer.w_gate, layer.w_up], [layer.w_down]]


# each matrix (layer attribute) -> the index of its input group in _inputs
INPUT_OF = {"wq": 0, "wk": 0, "wv": 0, "wo": 1, "w_gate": 2, "w_up": 2, "w_down": 3}


def _hessians(model, layer_index: int, streams: list[np.ndarray], n_fit: int, per_token: bool,
              wanted: set[int]) -> tuple[list[HessianSum], list[HeldOutInputs]]:
    """Run the layer on (copies of) the residual streams entering it; the Hessian of each input
    group in `wanted` (indices into _inputs; the others are not summed: an 8960-wide sum for a
    matrix that is only copied would be most of the time) over the first n_fit streams and over
    the rest (held out)."""
    layer = model.layers[layer_index]
    groups = _inputs(layer)
    fit, held = [HessianSum(per_token) for _ in groups], [HeldOutInputs(per_token) for _ in groups]
    try:
        for i, x in enumerate(streams):
            for g, (group, s) in enumerate(zip(groups, fit if i < n_fit else held)):
                if g in wanted:
                    group[0].observer = s.add
            model.run_layer(layer_index, x.copy())
    finally:
        for group in groups:
            group[0].observer = None
    return fit, held


def _encode_matrix(name: str, w: np.ndarray, qtype, hf: np.ndarray, n_fit: int, hh,
                   imp: np.ndarray, gptq: bool, damp: float) -> tuple[MatrixReport, np.ndarray]:
    """One matrix (float rows, already scaled if its group is) encoded plainly (as quantize_model
    encodes it) and, with gptq, with feedback through hf (a query or key matrix's rows first
    taken to the gain plain encoding gives them: score_gain.py); the one with the lower output
    error over the held-out inputs hh (H or InputRows), and the report."""
    target = w
    if is_score_matrix(name):   # plain encoding and the feedback both take the rows at their gain
        plain, gain = encode_at_gain(w, qtype, imp)
        target = (w * gain[:, None]).astype(np.float32)
    else:
        plain = quantize_tensor_rows(name, w, qtype, imp)
    e_plain = output_error(w, plain, qtype, hh)
    if not gptq:
        return MatrixReport(name, qtype.name, e_plain, e_plain, "plain"), plain
    improved = gptq_quantize(target, qtype, hf, n_fit, importance=imp, damp=damp)
    e_gptq = output_error(w, improved, qtype, hh)
    kept = "gptq" if e_gptq < e_plain else "plain"
    return MatrixReport(name, qtype.name, e_plain, e_gptq, kept), improved if kept == "gptq" else plain


def _scale_groups(model, il: int, weights: dict, todo: set[str], types, imps: dict, h_fit, h_held,
                  stage) -> tuple[dict[str, np.ndarray], list[ScaleReport]]:
    """Search and fold every scale group of layer il into `weights` (in place); the column
    scales of each scaled matrix (layer attribute -> s) and the reports."""
    layer, cfg = model.layers[il], model.cfg
    col = {}
    reports = []
    for g in awq.SCALE_GROUPS:
        touched = g.scaled + ((g.rows_of,) if g.rows_of else ())
        label = ",".join(getattr(layer, a).name.split(".")[-2] for a in g.scaled)
        if not all(getattr(layer, a).name in todo for a in touched):
            reports.append(ScaleReport(il, label, 0.0, 1.0, "a matrix it touches keeps the source's type"))
            continue
        stage(il, f"scales for {label}")
        hf, hh = h_fit[g.input_index], h_held[g.input_index]
        mean_abs = hf.abs_sum / hf.n

        def column_scales(alpha):
            return awq.group_scales(g, mean_abs, alpha, cfg.n_head, cfg.n_head_kv, cfg.head_dim)[0]

        mats = [(getattr(layer, a).name, weights[a], types[getattr(layer, a).name], imps[a]) for a in g.scaled]
        alpha, _ = awq.search_alpha(mats, hf.h, column_scales)
        ratio = 1.0
        if alpha:
            _, held = awq.search_alpha(mats, hh.h, column_scales, alphas=(0.0, alpha))
            ratio = held[alpha] / held[0.0] if held[0.0] else 1.0
            if ratio >= 1.0:
                alpha = 0.0
        reports.append(ScaleReport(il, label, alpha, ratio))
        if alpha:
            cols, rows = awq.group_scales(g, mean_abs, alpha, cfg.n_head, cfg.n_head_kv, cfg.head_dim)
            awq.fold(g, weights, cols, rows)
            for a in g.scaled:
                col[a] = cols
    return col, reports


def _float_layer(src, layer, todo: set[str]) -> dict[str, np.ndarray]:
    """The layer's matrices to encode (float rows, from the source file; a scale group only
    touches those), its norms and v's bias."""
    out = {}
    for a in INPUT_OF:
        t = src.tensors[getattr(layer, a).name]
        if t.name in todo:
            out[a] = dequantize(src.raw(t.name), t.qtype, (t.n_rows, t.n_cols))
    out["attn_norm"], out["ffn_norm"] = layer.attn_norm.copy(), layer.ffn_norm.copy()
    out["wv_bias"] = None if layer.wv.bias is None else layer.wv.bias.copy()
    return out


def _vector_bytes(v: np.ndarray) -> np.ndarray:
    """A float32 vector as the (1, 4n) bytes quantize_model takes for an F32 tensor."""
    return np.ascontiguousarray(v, dtype=np.float32).view(np.uint8).reshape(1, -1)


def layer_pass(model, tokenizer, src, types: dict[str, object], text: str, n_ctx: int, n_chunks: int,
               n_held_out: int, work_dir: Path, im: ImportanceMatrix | None = None, damp: float = DAMP,
               per_token: bool = True, stage: Callable[[int, str], None] = lambda il, s: None, gptq: bool = True,
               awq_scales: bool = False) -> tuple[dict[str, Path], list[MatrixReport], list[ScaleReport]]:
    """Encode every layer matrix whose planned type (types: name -> QuantType) differs from the
    source's, with error feedback (gptq) and/or activation-aware scales (awq_scales); stage(layer,
    what) is told what runs. Returns (name -> .npy file of its bytes, the changed norms and biases
    included; one report per matrix; one per scale group)."""
    from lowbit.runtime.kernels import QuantMatrix

    if n_chunks < 1 or n_held_out < 1:
        raise LayerPassError(f"the pass needs at least one calibration chunk to fit and one held out, "
                             f"not {n_chunks} and {n_held_out}")
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    chunks = chunk_tokens(tokenizer.encode(text, add_special=True), n_ctx, n_chunks + n_held_out, bos)
    if len(chunks) < n_chunks + n_held_out:
        raise LayerPassError(f"the calibration text holds {len(chunks)} chunks of {n_ctx} tokens; the pass "
                             f"needs {n_chunks} to fit and {n_held_out} held out")
    # the residual stream of every chunk entering the current layer: layer 0's is the embedding,
    # and after each layer is encoded the streams go through it (quantized) once
    streams = [np.ascontiguousarray(model.embed(c), dtype=np.float32) for c in chunks]
    files, reports, scale_reports = {}, [], []

    def save(name, raw):
        path = work_dir / f"{name}.npy"
        np.save(path, raw)
        files[name] = path

    for il, layer in enumerate(model.layers):
        groups = _inputs(layer)
        todo = {lin.name for group in groups for lin in group
                if lin.name in types and types[lin.name].name != src.tensors[lin.name].qtype.name}
        if todo:
            encoded = {a: i for a, i in INPUT_OF.items() if getattr(layer, a).name in todo}
            stage(il, "Hessians")
            h_fit, h_held = _hessians(model, il, streams, n_chunks, per_token, set(encoded.values()))
            weights = _float_layer(src, layer, todo)
            imps = {}
            for a, i in encoded.items():
                imp = im.importance(getattr(layer, a).name) if im is not None else None
                imps[a] = imp if imp is not None else (np.diagonal(h_fit[i].h) / h_fit[i].n).astype(np.float32)
            col = {}
            if awq_scales:
                col, found = _scale_groups(model, il, weights, todo, types, imps, h_fit, h_held, stage)
                scale_reports += found
            for a, i in encoded.items():
                lin = getattr(layer, a)
                stage(il, lin.name)
                hf, hh, imp = h_fit[i].h, h_held[i].h, imps[a]
                if a in col:                      # scaled: the statistics of W S
                    hf, imp = awq.scaled_statistics(col[a], hf, imp)
                    hh, _ = awq.scaled_statistics(col[a], hh, None)
                report, kept = _encode_matrix(lin.name, weights[a], types[lin.name], hf, h_fit[i].n, hh, imp,
                                              gptq, damp)
                reports.append(report)
                save(lin.name, kept)
                t = src.tensors[lin.name]
                model.swap_matrix(lin.name, QuantMatrix(kept, types[lin.name], t.n_rows, t.n_cols, lin.name))
            for norm in ("attn_norm", "ffn_norm"):         # folded scales: the file's norms change
                if not np.array_equal(weights[norm], getattr(layer, norm)):
                    setattr(layer, norm, weights[norm])
                    save(f"blk.{il}.{norm}.weight", _vector_bytes(weights[norm]))
            if weights["wv_bias"] is not None and not np.array_equal(weights["wv_bias"], layer.wv.bias):
                layer.wv.bias = weights["wv_bias"]
                save(layer.wv.name.replace(".weight", ".bias"), _vector_bytes(weights["wv_bias"]))
            layer.__post_init__()      # the stacked products' bias from the new v bias
            del h_fit, h_held
        for x in streams:
            model.run_layer(il, x)
    return files, reports, scale_reports
