"""The attention score matrices (attn_q, attn_k) are encoded at their least-squares gain.

The lifted encoders (IQ2, IQ3, IQ1: docs/encoders.md) carry rows at a gain above their fit; for
queries and keys that sharpens every attention softmax, so quant/score_gain.py encodes those rows
again at the gain of their first encoding's least-squares fit.
"""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.quant.decode import dequantize
from lowbit.quant.encode import quantize
from lowbit.quant.gguffile import open_gguf
from lowbit.quant.quantize_model import quantize_model
from lowbit.quant.recipes import PlanOptions
from lowbit.quant.score_gain import is_score_matrix, least_squares_gain, quantize_tensor_rows
from lowbit.quant.types import by_name

from synthetic import build_model

LIFTED = ("IQ2_XXS", "IQ2_S", "IQ3_XXS", "IQ3_S")


def heavy_rows(seed=0, n_rows=24, n_cols=1024):
    rng = np.random.default_rng(seed)
    rows = rng.standard_t(4, (n_rows, n_cols)).astype(np.float32) * 0.02
    imp = rng.gamma(0.6, 1.0, n_cols).astype(np.float32)
    return rows, imp


def test_score_matrix_names():
    assert is_score_matrix("blk.0.attn_q.weight") and is_score_matrix("blk.27.attn_k.weight")
    for name in ("blk.0.attn_v.weight", "blk.0.attn_q.bias", "blk.0.attn_output.weight",
                 "blk.0.attn_qkv.weight", "token_embd.weight", "blk.0.attn_q_norm.weight"):
        assert not is_score_matrix(name), name


@pytest.mark.parametrize("tname", LIFTED)
def test_score_rows_sit_at_their_fit(tname):
    """Plain encodings of these types are lifted above their fit (gain < 1); the score-matrix
    encoding brings every row to within the f16 rounding of its fit and lowers the error."""
    qtype = by_name(tname)
    rows, imp = heavy_rows()
    plain = quantize(rows, qtype, imp)
    y0 = dequantize(plain, qtype, rows.shape)
    g0 = least_squares_gain(rows, y0, imp)
    assert g0.mean() < 0.995, f"{tname}: the plain encoding is not lifted ({g0.mean():.4f})"
    fitted = quantize_tensor_rows("blk.3.attn_k.weight", rows, qtype, imp)
    y1 = dequantize(fitted, qtype, rows.shape)
    g1 = least_squares_gain(rows, y1, imp)
    assert np.abs(g1 - 1).max() < 0.01, f"{tname}: gains after {g1.min():.4f}..{g1.max():.4f}"
    err0 = (imp * (y0 - rows) ** 2).sum()
    err1 = (imp * (y1 - rows) ** 2).sum()
    assert err1 < err0
    # other kinds of matrix are encoded as they always were
    assert np.array_equal(quantize_tensor_rows("blk.3.ffn_up.weight", rows, qtype, imp), plain)


@pytest.mark.parametrize("tname", ["IQ1_S", "IQ1_M"])
def test_one_bit_score_rows_go_half_way_to_their_fit(tname):
    """At IQ1's error level the score rows take the square root of their least-squares gain:
    their gain after the second encoding is about the square root of the plain one's."""
    qtype = by_name(tname)
    rows, imp = heavy_rows()
    y0 = dequantize(quantize(rows, qtype, imp), qtype, rows.shape)
    g0 = least_squares_gain(rows, y0, imp)
    y1 = dequantize(quantize_tensor_rows("blk.3.attn_q.weight", rows, qtype, imp), qtype, rows.shape)
    g1 = least_squares_gain(rows, y1, imp)
    assert g0.mean() < 0.97, f"{tname}: the plain encoding is not lifted ({g0.mean():.4f})"
    # half way (in log scale): g1 ~ sqrt(g0), not ~1 as for the other types
    assert np.abs(np.log(g1) - 0.5 * np.log(g0)).mean() < 0.25 * np.abs(np.log(g0)).mean()


def test_gain_of_degenerate_rows_is_one():
    rows = np.zeros((2, 256), np.float32)
    rows[1, 0] = 1.0
    q = np.zeros_like(rows)
    assert np.array_equal(least_squares_gain(rows, q, None), [1.0, 1.0])


def test_quantize_model_fits_only_the_score_matrices(tmp_path):
    src = build_model(tmp_path / "src.gguf", weight_type="F16", embd_type="F16", n_embd=256, n_ff=512)
    out = tmp_path / "out.gguf"
    quantize_model(open_gguf(src), out, PlanOptions(target="IQ3_S"))
    s, q = open_gguf(src), open_gguf(out)
    for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_up.weight"):
        t = s.tensors[name]
        rows = dequantize(s.raw(name), t.qtype, t.shape).reshape(t.n_rows, -1)
        qt = q.tensors[name].qtype
        assert qt.name == "IQ3_S"
        raw = np.asarray(q.raw(name)).reshape(t.n_rows, -1)
        gain = least_squares_gain(rows, dequantize(raw, qt, rows.shape), None)
        if is_score_matrix(name):   # rows of one block: the f16 rounding moves a few by 1-2 %
            assert abs(gain.mean() - 1) < 0.003 and np.abs(gain - 1).max() < 0.03, name
        else:
            assert np.array_equal(raw, quantize(rows, qt)), name
            assert gain.mean() < 0.99, name
