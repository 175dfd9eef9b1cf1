"""Activation-aware scaling (AWQ, Lin et al. 2023), folded into tensors the file already has.

A matrix W reading inputs x computes W x = (W S)(S^-1 x) for every positive diagonal S. Where
the operation that makes x can absorb S^-1 exactly, the file keeps its tensors, types and size
and only W S is quantized; channels with large activations (whose weights count most in the
output) then get larger weights, so finer steps relative to the scale their block shares with
quieter channels. The places that absorb S^-1 in a llama-style layer (ScaleGroup below):

    q, k, v      the attention RMSNorm's weight            (x = rmsnorm(r) * g)
    attn_output  v's rows and bias, one scale per channel   (x = softmax(qk) v: per output
                 of a KV head, shared by its query heads    channel of v, linear)
    gate, up     the feed-forward RMSNorm's weight
    ffn_down     up's rows                                 (x = act(gate x') * (up x'))

The scales are s = m^alpha / sqrt(max(m^alpha) min(m^alpha)), m the channel's mean |x| over the
calibration inputs and alpha searched on a grid by the output error the group's matrices make
on sampled rows (alpha = 0: s = 1, plain encoding, so the search never picks worse than plain
on those rows). In the scaled problem the matrix's input Hessian is S^-1 H S^-1 and its
importance imp / s^2: the same output error, written for W S.

This module is numerics on plain arrays; the layer pass (eval/layer_pass.py) collects the
statistics, applies the groups in order and keeps the better of plain and scaled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .decode import dequantize
from .gptq import InputRows, quadratic_error
from .score_gain import quantize_tensor_rows
from .types import QuantType

ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SEARCH_ROWS = 128          # rows of each matrix the search encodes per candidate


@dataclass(frozen=True)
class ScaleGroup:
    """Matrices (layer attributes) whose columns are multiplied by s, the input group they read
    (index into the pass's input groups), and what divides by s: a norm vector (attribute
    name) or the rows of a matrix (attribute name; its bias too), expanded over query heads."""
    scaled: tuple[str, ...]
    input_index: int
    norm: str | None = None
    rows_of: str | None = None


SCALE_GROUPS = (
    ScaleGroup(("wq", "wk", "wv"), 0, norm="attn_norm"),
    ScaleGroup(("wo",), 1, rows_of="wv"),
    ScaleGroup(("w_gate", "w_up"), 2, norm="ffn_norm"),
    ScaleGroup(("w_down",), 3, rows_of="w_up"),
)


def scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """s = m^alpha, normalised so that the largest and smallest are reciprocal (float64)."""
    m = np.maximum(np.asarray(mean_abs, dtype=np.float64), 1e-8 * max(float(np.max(mean_abs)), 1e-30))
    s = m ** alpha
    return s / np.sqrt(s.max() * s.min())


def kv_channels(values: np.ndarray, n_head: int, n_head_kv: int, head_dim: int) -> np.ndarray:
    """(n_head * head_dim,) -> (n_head_kv * head_dim,): the mean over each KV head's query heads."""
    return np.asarray(values).reshape(n_head_kv, n_head // n_head_kv, head_dim).mean(axis=1).reshape(-1)


def expand_kv(per_kv: np.ndarray, n_head: int, n_head_kv: int, head_dim: int) -> np.ndarray:
    """(n_head_kv * head_dim,) -> (n_head * head_dim,): each KV channel's value for its query heads."""
    return np.repeat(np.asarray(per_kv).reshape(n_head_kv, 1, head_dim), n_head // n_head_kv, axis=1).reshape(-1)


def group_scales(group: ScaleGroup, mean_abs: np.ndarray, alpha: float, n_head: int, n_head_kv: int,
                 head_dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(the scaled matrices' column scales, the divided matrix's row scales or None). For
    attn_output one scale per channel of v, from the mean over the query heads that read it."""
    if group.rows_of == "wv":
        per_kv = scales(kv_channels(mean_abs, n_head, n_head_kv, head_dim), alpha)
        return expand_kv(per_kv, n_head, n_head_kv, head_dim), per_kv
    s = scales(mean_abs, alpha)
    return s, (s if group.rows_of else None)


def fold(group: ScaleGroup, tensors: dict[str, np.ndarray], cols: np.ndarray, rows: np.ndarray | None) -> None:
    """Apply the scales to a layer's float tensors (layer attribute -> array; "wv_bias" for v's
    bias), replacing the arrays: the scaled matrices' columns times cols, the norm or the divided
    matrix's rows (and bias) over the same scales. The unquantized layer computes the same."""
    for a in group.scaled:
        tensors[a] = (tensors[a] * cols[None, :]).astype(np.float32)
    if group.norm:
        tensors[group.norm] = (tensors[group.norm] / cols).astype(np.float32)
    if group.rows_of:
        tensors[group.rows_of] = (tensors[group.rows_of] / rows[:, None]).astype(np.float32)
        bias = group.rows_of + "_bias"
        if tensors.get(bias) is not None:
            tensors[bias] = (tensors[bias] / rows).astype(np.float32)


def scaled_importance(s: np.ndarray, importance: np.ndarray | None) -> np.ndarray | None:
    """imp / s^2: the importance of a matrix's columns once they are scaled by s."""
    inv = 1.0 / s
    return None if importance is None else (importance * inv * inv).astype(np.float32)


def scaled_statistics(s: np.ndarray, h, importance: np.ndarray | None):
    """(S^-1 H S^-1, imp / s^2): a matrix's input statistics once its columns are scaled by s
    (h: H, or the InputRows X it sums, which become X S^-1)."""
    inv = 1.0 / s
    scaled = InputRows(h.x * inv.astype(np.float32)) if isinstance(h, InputRows) else h * inv[:, None] * inv[None, :]
    return scaled, scaled_importance(s, importance)


def search_alpha(mats: list[tuple[str, np.ndarray, QuantType, np.ndarray | None]], h: np.ndarray,
                 column_scales, alphas=ALPHAS, n_rows: int = SEARCH_ROWS) -> tuple[float, dict[float, float]]:
    """The alpha whose scales (column_scales(alpha)) give the least output error
    sum_rows (w - q/s) H (w - q/s)^T over sampled rows of the matrices (name, rows, type,
    importance) that read inputs with second-moment matrix h (or the InputRows it sums), q the
    encoding of W S with importance imp / s^2. Returns (alpha, error per alpha)."""
    errors = {}
    for alpha in alphas:
        s = column_scales(alpha)
        total = 0.0
        for name, w, qtype, imp in mats:
            rows = w[np.linspace(0, w.shape[0] - 1, min(n_rows, w.shape[0])).astype(int)]
            ws = (rows * s).astype(np.float32)
            q = dequantize(quantize_tensor_rows(name, ws, qtype, scaled_importance(s, imp)), qtype, ws.shape)
            # (W S - Q) S^-1 H S^-1 (W S - Q)^T, without forming the scaled H
            total += quadratic_error(rows - q / s, h)
        errors[alpha] = total
    return min(errors, key=errors.get), errors
