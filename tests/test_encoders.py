"""Every encoder in the registry: against ggml's reference quantizers (libgguf) and bad input.

Real-row quality (the strict bar, 2 to 3.5 bits) is measured by bench/encoder_quality.py and
reported in docs/encoders.md; here random rows guard against regressions with a looser bound.
"""
from __future__ import annotations

import libgguf
import numpy as np
import pytest

from lowbit.quant.decode import dequantize
from lowbit.quant.encode import quantize
from lowbit.quant.types import all_types

from conftest import type_params
from synthetic import reference_decode

ENCODABLE = [t for t in all_types() if t.encode_row is not None]
# Looser than the real-row bar: random rows are not what the encoders are tuned for.
RANDOM_ROW_BOUND = 1.05


def rows_of(kind, rng, n_rows=16, n_cols=512):
    if kind == "normal":
        return rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if kind == "heavy_tail":
        return (rng.standard_t(3, (n_rows, n_cols)) * 0.02).astype(np.float32)
    raise ValueError(kind)


def error(rows, q, imp):
    d2 = np.square(rows.astype(np.float64) - q.astype(np.float64))
    return float((d2 * (imp if imp is not None else 1.0)).sum())


@type_params(ENCODABLE)
@pytest.mark.parametrize("kind", ["normal", "heavy_tail"])
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_error_is_no_worse_than_ggml(qtype, kind, with_imatrix, rng):
    if qtype.is_float:
        pytest.skip("float types are exact up to rounding; see test_float_types_round")
    if not with_imatrix and libgguf.quantize_requires_imatrix(qtype.ggml_id):
        pytest.skip(f"ggml makes {qtype.name} only with an importance matrix")
    rows = rows_of(kind, rng)
    imp = (rng.gamma(1.0, 1.0, rows.shape[1]) + 0.01).astype(np.float32) if with_imatrix else None
    raw = quantize(rows, qtype, imp)
    ours = dequantize(raw, qtype, rows.shape)
    np.testing.assert_array_equal(ours, reference_decode(raw, qtype))
    ref = reference_decode(np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imp), np.uint8), qtype)
    assert error(rows, ours, imp) <= RANDOM_ROW_BOUND * error(rows, ref, imp)


@type_params(ENCODABLE)
def test_zero_and_outlier_rows(qtype, rng):
    rows = np.zeros((3, 256), np.float32)
    rows[1] = rng.standard_normal(256)
    rows[1, 17] = 1000.0
    rows[2, :] = 1e-30
    imp = np.ones(256, np.float32)
    q = dequantize(quantize(rows, qtype, imp), qtype, rows.shape)
    assert np.isfinite(q).all()
    np.testing.assert_array_equal(q[0], 0.0)
    if qtype.is_float:
        assert q[1, 17] == 1000.0
        return
    # At 2 bits the outlier's group cannot hold both it and its neighbours, so "the outlier
    # survives" is the wrong bar (trading it away can cost less in total); the bar is the
    # reference quantizer's error on the same row.
    raw_ref = np.asarray(libgguf.quantize_rows(rows[1:2], qtype.ggml_id, imatrix=imp), np.uint8)
    ref = reference_decode(raw_ref, qtype).reshape(1, -1)
    assert error(rows[1:2], q[1:2], imp) <= RANDOM_ROW_BOUND * error(rows[1:2], ref, imp)


@type_params(ENCODABLE)
def test_encoding_is_deterministic(qtype, rng):
    rows = rows_of("normal", rng, 8, 256)
    np.testing.assert_array_equal(quantize(rows, qtype), quantize(rows, qtype))


@type_params(ENCODABLE)
def test_bad_input_is_refused(qtype, rng):
    if qtype.block_size > 1:
        with pytest.raises(ValueError, match="not a whole number of"):
            quantize(np.zeros((2, qtype.block_size + 1), np.float32), qtype)
    rows = rows_of("normal", rng, 2, 256)
    bad = rows.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize(bad, qtype)
    with pytest.raises(ValueError, match="has 255 columns but the rows have 256"):
        quantize(rows, qtype, np.ones(255, np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(rows, qtype, np.full(256, np.nan, np.float32))
