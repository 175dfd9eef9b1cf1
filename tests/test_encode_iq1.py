"""IQ1_S / IQ1_M encoders: grid tables, the delta sign, IQ1_M's split super-scale, and that the
bytes decode to exactly what the search assumed, with the super-scale lifted (iq1.py says why)."""
from __future__ import annotations

import gguf
import libgguf
import numpy as np
import pytest

from lowbit.quant.decode import dequantize
from lowbit.quant.encode import quantize
from lowbit.quant.formats import iq1
from lowbit.quant.tables import IQ1_DELTA, IQ1S_GRID
from lowbit.quant.types import by_name

IQ1_S = by_name("IQ1_S")
IQ1_M = by_name("IQ1_M")
# (scale group, shift group) sizes
GROUPS = {"IQ1_S": (32, 32), "IQ1_M": (16, 8)}
LIFT = {"IQ1_S": iq1.IQ1S_LIFT, "IQ1_M": iq1.IQ1M_LIFT}


def lifted(d, name):
    """The super-scale stored for a searched one: times the type's lift, rounded to f16."""
    return np.float32(np.float16(np.float64(d) * LIFT[name]))


def reference_decode(raw, qtype, shape):
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(qtype.ggml_id)).reshape(shape)


def weighted_error(x, q, imp):
    return float((np.square(x.astype(np.float64) - q) * (1.0 if imp is None else imp)).sum())


def iq1_s_fields(block):
    """(d, per-32 l, per-32 negative delta, per-8 grid index) of one IQ1_S block."""
    d = float(np.frombuffer(block[:2].tobytes(), np.float16)[0])
    qh = np.frombuffer(block[34:50].tobytes(), np.uint16).astype(np.int64)
    idx = np.array([block[2 + i] | (((qh[i // 4] >> (3 * (i % 4))) & 7) << 8) for i in range(32)])
    return d, (qh >> 12) & 7, (qh & 0x8000) != 0, idx


def iq1_m_fields(block):
    """(d, d's f16 bits, per-16 l, per-8 negative delta, per-8 grid index) of one IQ1_M block."""
    sc = np.frombuffer(block[48:56].tobytes(), np.uint16).astype(np.int64)
    bits = int(sum(((sc[j] >> 12) & 15) << (4 * j) for j in range(4)))
    d = float(np.array([bits], np.uint16).view(np.float16)[0])
    l = np.array([(sc[j // 4] >> (3 * (j % 4))) & 7 for j in range(16)])
    h = np.array([(block[32 + i // 2] >> (4 * (i % 2))) & 15 for i in range(32)])
    idx = block[:32].astype(np.int64) | ((h & 7) << 8)
    return d, bits, l, (h & 8) != 0, idx


def values_from_fields(d, l, neg, idx, B, G):
    """The 256 values of a super-block from its fields, in f32 as the decoder computes them."""
    i = np.arange(256)
    dl = np.float32(d) * (2 * l[i // B] + 1).astype(np.float32)
    delta = np.where(neg[i // G], -IQ1_DELTA, IQ1_DELTA).astype(np.float32)
    return dl * (IQ1S_GRID[idx[i // 8], i % 8] + delta)


def test_ternary_tables_match_the_grid():
    grid_of, start, neighbours, levels, pow3 = iq1._ternary_tables()
    codes = ((IQ1S_GRID.astype(np.int64) + 1) * pow3).sum(axis=1)
    np.testing.assert_array_equal(grid_of[codes], np.arange(2048))
    assert (grid_of >= 0).sum() == 2048
    np.testing.assert_array_equal(levels, IQ1S_GRID + 1)
    counts = np.diff(start)
    assert (counts[grid_of >= 0] == 0).all() and (counts[grid_of < 0] >= 1).all()
    assert neighbours.min() >= 0 and neighbours.max() < 2048
    # every listed neighbour is at the smallest distance or the next one from its pattern
    rng = np.random.default_rng(0)
    for code in rng.choice(np.nonzero(grid_of < 0)[0], 50, replace=False):
        pattern = (code // pow3) % 3 - 1
        d2 = np.square(IQ1S_GRID - pattern).sum(axis=1)
        listed = neighbours[start[code]:start[code + 1]]
        assert set(listed) == set(np.nonzero(d2 <= np.unique(d2)[1])[0])


@pytest.mark.parametrize("name", ["IQ1_S", "IQ1_M"])
def test_grid_indices_are_valid(name, rng):
    qtype = by_name(name)
    rows = rng.standard_normal((4, 512)).astype(np.float32)
    raw = quantize(rows, qtype, rng.gamma(1.0, 1.0, 512).astype(np.float32))
    q = dequantize(raw, qtype, rows.shape)
    np.testing.assert_array_equal(q, reference_decode(raw, qtype, rows.shape))
    fields = iq1_s_fields if name == "IQ1_S" else iq1_m_fields
    for block in raw.reshape(-1, qtype.type_size):
        idx = fields(block)[-1]
        assert idx.min() >= 0 and idx.max() < 2048
    # each 8 is dl * (a grid point + delta)
    for r in range(rows.shape[0]):
        for block_q in q[r].reshape(-1, 8):
            t = block_q / np.abs(block_q).max()
            assert len(np.unique(np.round(t, 5))) <= 3


@pytest.mark.parametrize("name", ["IQ1_S", "IQ1_M"])
@pytest.mark.parametrize("negative", [False, True])
def test_delta_sign_is_stored(name, negative, rng):
    """A row built from known fields comes back exactly, with the delta sign in its bit."""
    qtype = by_name(name)
    B, G = GROUPS[name]
    d = np.float32(np.float16(0.0123))
    l = rng.integers(0, 8, 256 // B)
    neg = np.full(256 // G, negative)
    idx = rng.integers(0, 2048, 32)
    x = values_from_fields(d, l, neg, idx, B, G)[None, :]
    raw = quantize(x, qtype)
    np.testing.assert_array_equal(dequantize(raw, qtype, x.shape),
                                  values_from_fields(lifted(d, name), l, neg, idx, B, G)[None, :])
    if name == "IQ1_S":
        _, _, got_neg, _ = iq1_s_fields(raw[0])
    else:
        _, _, _, got_neg, _ = iq1_m_fields(raw[0])
    assert (got_neg == negative).all()


def test_iq1_s_delta_sign_per_32(rng):
    B, G = GROUPS["IQ1_S"]
    d = np.float32(np.float16(0.5))
    neg = np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)
    idx = rng.integers(0, 2048, 32)
    x = values_from_fields(d, np.full(8, 7), neg, idx, B, G)[None, :]
    raw = quantize(x, IQ1_S)
    np.testing.assert_array_equal(dequantize(raw, IQ1_S, x.shape),
                                  values_from_fields(lifted(d, "IQ1_S"), np.full(8, 7), neg, idx, B, G)[None, :])
    np.testing.assert_array_equal(iq1_s_fields(raw[0])[2], neg)


def test_iq1_m_super_scale_split_over_four_words(rng):
    B, G = GROUPS["IQ1_M"]
    d = np.float32(np.float16(0.0123))
    stored = lifted(d, "IQ1_M")
    bits = int(np.array([stored], np.float16).view(np.uint16)[0])
    assert len({(bits >> (4 * j)) & 15 for j in range(4)}) == 4    # four different nibbles
    l = rng.integers(0, 8, 16)
    l[0] = 7               # the largest scale in use, so that d itself is the best fit
    neg = rng.integers(0, 2, 32).astype(bool)
    idx = rng.integers(0, 2048, 32)
    x = values_from_fields(d, l, neg, idx, B, G)[None, :]
    raw = quantize(x, IQ1_M)
    got_d, got_bits, got_l, got_neg, _ = iq1_m_fields(raw[0])
    assert got_bits == bits and got_d == stored
    np.testing.assert_array_equal(got_l, l)
    np.testing.assert_array_equal(got_neg, neg)
    np.testing.assert_array_equal(dequantize(raw, IQ1_M, x.shape), values_from_fields(stored, l, neg, idx, B, G)[None, :])


@pytest.mark.parametrize("name", ["IQ1_S", "IQ1_M"])
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_row_decodes_to_what_the_search_assumed(name, with_imatrix, rng):
    qtype = by_name(name)
    B, G = GROUPS[name]
    x = (rng.standard_t(4, 256) * 0.03).astype(np.float32)
    imp = rng.gamma(1.0, 1.0, 256).astype(np.float32) if with_imatrix else np.zeros(0, np.float32)
    ws = iq1._workspace(B, G)
    w = np.empty(256, np.float32)
    L = np.zeros(256 // B, np.int64)
    idx = np.zeros(32, np.int64)
    neg = np.zeros(256 // G, np.bool_)
    d = iq1._superblock(x, imp, 0, B, G, ws, w, L, idx, neg)
    assert d == np.float32(np.float16(d))     # the f16-rounded scale is what was searched with
    assumed = values_from_fields(lifted(d, name), L, neg, idx, B, G)
    raw = quantize(x[None, :], qtype, imp if with_imatrix else None)
    np.testing.assert_array_equal(dequantize(raw, qtype, (1, 256))[0], assumed)


@pytest.mark.parametrize("name", ["IQ1_S", "IQ1_M"])
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_error_beats_ggml(name, with_imatrix, rng):
    qtype = by_name(name)
    if not with_imatrix and libgguf.quantize_requires_imatrix(qtype.ggml_id):
        pytest.skip(f"ggml makes {name} only with an importance matrix")
    rows = (rng.standard_t(5, (8, 1024)) * 0.02).astype(np.float32)
    imp = (rng.gamma(0.7, 1.0, 1024) + 0.01).astype(np.float32) if with_imatrix else None
    ours = dequantize(quantize(rows, qtype, imp), qtype, rows.shape)
    ref = np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imp), np.uint8)
    theirs = reference_decode(ref, qtype, rows.shape)
    # Both lift their scales (ggml by the same factors), which costs a little weighted error.
    assert weighted_error(rows, ours, imp) < weighted_error(rows, theirs, imp)


def test_empty_importance_and_zero_blocks():
    x = np.zeros((2, 512), np.float32)
    x[1, 256:] = np.linspace(-1, 1, 256, dtype=np.float32)
    for qtype in (IQ1_S, IQ1_M):
        q = dequantize(quantize(x, qtype), qtype, x.shape)
        np.testing.assert_array_equal(q[0], 0.0)
        np.testing.assert_array_equal(q[1, :256], 0.0)
        assert np.abs(q[1, 256:] - x[1, 256:]).mean() < 0.2
