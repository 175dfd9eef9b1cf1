"""Every registered decoder equals gguf-py's dequantize and ggml's C dequantizers (libgguf) bit
for bit: two oracles, since lowbit's format tables come from the gguf package itself."""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.quant.decode import dequantize
from lowbit.quant.types import UnsupportedTypeError, all_types, by_id, by_name

from conftest import ALL_TYPES, QUANTIZED, real_model, type_params
from synthetic import encode_rows, ggml_decode, reference_decode

EXPECTED_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                 "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                 "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]


def assert_bit_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    # NaN payloads aside, the bit patterns must agree (so -0.0 != 0.0 here).
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} values differ, first at {np.argwhere(~same)[0]}"


def test_registry_covers_the_expected_types():
    assert sorted(t.name for t in all_types()) == sorted(EXPECTED_TYPES)
    for t in all_types():
        assert by_id(t.ggml_id) is t and by_name(t.name.lower()) is t


def test_unknown_types_are_refused_clearly():
    with pytest.raises(UnsupportedTypeError, match="unknown tensor type 'Q9_9'"):
        by_name("Q9_9")
    with pytest.raises(UnsupportedTypeError, match="not supported by lowbit"):
        by_id(4)  # Q4_2: removed from ggml long ago


@type_params()
@pytest.mark.parametrize("kind", ["normal", "outlier", "zeros", "heavy_tail"])
def test_decoder_matches_gguf_on_encoded_rows(qtype, kind, rng):
    n_rows, n_cols = 6, 512
    rows = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if kind == "outlier":
        rows[:, 37] = 250.0  # one huge weight per row dominates its block's scale
    elif kind == "zeros":
        rows[:] = 0.0
    elif kind == "heavy_tail":
        rows = rng.standard_t(2, (n_rows, n_cols)).astype(np.float32) * 0.02
    raw = encode_rows(rows, qtype)
    got = dequantize(raw, qtype, (n_rows, n_cols))
    assert_bit_equal(got, reference_decode(raw, qtype))
    assert_bit_equal(got, ggml_decode(raw, qtype, n_cols))


@type_params(QUANTIZED)
def test_decoder_matches_gguf_on_arbitrary_bytes(qtype, rng):
    # Random bytes set every bit of every field, including ones an encoder rarely produces.
    raw = rng.integers(0, 256, size=(5, 4 * qtype.type_size), dtype=np.uint8)
    got = dequantize(raw, qtype, (5, 4 * qtype.block_size))
    assert_bit_equal(got, reference_decode(raw, qtype))
    assert_bit_equal(got, ggml_decode(raw, qtype, 4 * qtype.block_size))


@type_params()
def test_decoder_keeps_leading_shape(qtype, rng):
    rows = rng.standard_normal((2 * 3, 256)).astype(np.float32)
    raw = encode_rows(rows, qtype)
    got = dequantize(raw, qtype, (2, 3, 256))
    assert got.shape == (2, 3, 256)
    assert_bit_equal(got.reshape(6, 256), reference_decode(raw, qtype).reshape(6, 256))


@type_params(QUANTIZED)
def test_row_length_not_whole_blocks_is_refused(qtype):
    n_cols = qtype.block_size + 16
    with pytest.raises(ValueError, match="not a whole number of"):
        dequantize(np.zeros(1000, np.uint8), qtype, (2, n_cols))


@type_params()
def test_wrong_byte_count_is_refused(qtype):
    n_cols = 256
    good = 3 * qtype.row_bytes(n_cols)
    with pytest.raises(ValueError, match=f"needs {good} bytes, got {good - 1}"):
        dequantize(np.zeros(good - 1, np.uint8), qtype, (3, n_cols))


@pytest.mark.real
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_decoder_matches_gguf_on_real_tensors(model):
    from lowbit.quant.gguffile import open_gguf
    g = open_gguf(real_model(model))
    seen = set()
    for t in g.tensors.values():
        if t.qtype.name in seen:
            continue
        seen.add(t.qtype.name)
        raw = g.raw(t.name)[: min(t.n_bytes, 64 * t.qtype.row_bytes(t.n_cols))]
        n_rows = raw.size // t.qtype.row_bytes(t.n_cols)
        got = dequantize(raw, t.qtype, (n_rows, t.n_cols))
        assert_bit_equal(got, reference_decode(raw.reshape(n_rows, -1), t.qtype))
        assert_bit_equal(got, ggml_decode(raw, t.qtype, t.n_cols))
    assert len(seen) >= 3


@pytest.mark.real
@type_params(QUANTIZED)
def test_decoder_matches_gguf_on_reencoded_real_rows(qtype):
    """Real weight rows (SmolLM2 ffn_down, 1536 wide) re-encoded by the reference quantizer."""
    from lowbit.quant.gguffile import open_gguf
    g = open_gguf(real_model("smollm2-135m"))
    t = g.tensors["blk.3.ffn_down.weight"]
    rows = dequantize(g.raw(t.name), t.qtype, t.shape)[:8]
    raw = encode_rows(rows, qtype)
    got = dequantize(raw, qtype, rows.shape)
    assert_bit_equal(got, reference_decode(raw, qtype))
    assert_bit_equal(got, ggml_decode(raw, qtype, rows.shape[1]))
