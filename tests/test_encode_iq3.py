"""IQ3_XXS and IQ3_S encoders: search tables, snapping, sign parity, exact decode, error vs ggml."""
from __future__ import annotations

import libgguf
import numpy as np
import pytest

from lowbit.quant.decode import dequantize
from lowbit.quant.encode import quantize
from lowbit.quant.formats import iq3
from lowbit.quant.tables import IQ3S_GRID, IQ3XXS_GRID
from lowbit.quant.types import by_name

TABLES = {
    "IQ3_XXS": (IQ3XXS_GRID, 4.0, iq3.XXS_UNITS, iq3.XXS_THRESH, iq3.XXS_INDEX, iq3.XXS_NB_START, iq3.XXS_NB),
    "IQ3_S": (IQ3S_GRID, 1.0, iq3.S_UNITS, iq3.S_THRESH, iq3.S_INDEX, iq3.S_NB_START, iq3.S_NB),
}
NAMES = list(TABLES)


def codes_of(units, levels):
    return np.searchsorted(levels, units) @ np.array([1, 8, 64, 512])


@pytest.mark.parametrize("name", NAMES)
def test_search_tables(name):
    grid, unit, units, thresholds, index_of, start, nb = TABLES[name]
    np.testing.assert_array_equal(units * unit, grid)
    levels = np.unique(units)
    np.testing.assert_allclose(thresholds, (levels[1:] + levels[:-1]) / 2)
    codes = codes_of(units, levels)
    # every grid point maps back to itself, and nothing else is on the grid
    np.testing.assert_array_equal(index_of[codes], np.arange(len(grid)))
    assert (index_of >= 0).sum() == len(grid)
    sizes = np.diff(start)
    off = index_of < 0
    assert (sizes[off] > 0).all() and (sizes[~off] == 0).all()
    assert nb.min() >= 0 and nb.max() < len(grid)


@pytest.mark.parametrize("name", NAMES)
def test_snap_is_the_best_among_the_candidates(name, rng):
    """group_codes levels each weight to its nearest level; on-grid codes snap to the exact
    optimum over the whole grid, off-grid ones to the best neighbour, which is the exact optimum
    most of the time."""
    _, _, units, thresholds, index_of, start, nb = TABLES[name]
    exact = 0
    n = 250
    levels = np.empty(32, np.int32)
    codes = np.empty(8, np.int32)
    for _ in range(n):
        a = (rng.random(32) * 16).astype(np.float32)
        w = (rng.random(32) + 0.1).astype(np.float32)
        s = np.float32(rng.uniform(0.8, 1.2))
        iq3.group_codes(a, 0, np.float32(1) / s, thresholds, levels, codes)
        level = (a[:, None] * (np.float32(1) / s) > thresholds).sum(1)
        np.testing.assert_array_equal(codes, level.reshape(8, 4) @ np.array([1, 8, 64, 512]))
        for g in range(8):
            j = iq3.snap_group(a, w, 4 * g, s, codes[g], units, index_of, start, nb)
            errs = (w[4 * g:4 * g + 4] * np.square(a[4 * g:4 * g + 4] - s * units)).sum(1)
            if index_of[codes[g]] >= 0:
                assert j == index_of[codes[g]] and errs[j] == pytest.approx(errs.min(), rel=1e-5)
            else:
                cands = nb[start[codes[g]]:start[codes[g] + 1]]
                assert j in cands and errs[j] == pytest.approx(errs[cands].min(), rel=1e-5)
            exact += errs[j] <= errs.min() * (1 + 1e-5)
    assert exact > 0.9 * 8 * n


LIFT = {"IQ3_XXS": iq3.XXS_LIFT, "IQ3_S": iq3.S_LIFT}


def assumed_values(name, x, imp):
    """The 256 values search_block chose for x (f16 d, sub-scales, grid points, signs), with d
    lifted as the encoder stores it (iq3.py says why)."""
    _, _, units, thresholds, index_of, start, nb = TABLES[name]
    idx = np.empty(64, np.int32)
    mult = np.empty(8, np.int32)
    neg = np.empty(256, np.uint8)
    d = iq3.search_block(x, imp, 0, name == "IQ3_XXS", units, thresholds, index_of, start, nb,
                         idx, mult, neg)
    d = np.float32(np.float16(np.float32(d) * LIFT[name]))
    s = np.repeat(d * (2 * mult + 1).astype(np.float32), 32)
    mags = (s.reshape(64, 4) * units[idx]).reshape(-1)
    return np.where(neg.astype(bool), -mags, mags), neg


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_row_decodes_to_the_searched_values(name, with_imatrix, rng):
    qtype = by_name(name)
    x = (rng.standard_t(4, 256) * 0.03).astype(np.float32)
    x[64:96] = 0.0   # an all-zero sub-block inside a live block
    imp = rng.gamma(1.0, 1.0, 256).astype(np.float32) if with_imatrix else np.zeros(0, np.float32)
    expected, _ = assumed_values(name, x, imp)
    got = dequantize(quantize(x[None], qtype, imp if with_imatrix else None), qtype, (1, 256))[0]
    np.testing.assert_array_equal(got, expected)


def test_iq3_xxs_signs_have_even_parity(rng):
    x = (rng.standard_normal(256) * 0.05).astype(np.float32)
    x[:8] = -np.abs(x[:8])          # 8 negatives: even, all signs kept
    x[8:16] = -np.abs(x[8:16])
    x[15] = abs(x[15])              # 7 negatives: one sign must go
    imp = np.ones(256, np.float32)
    values, neg = assumed_values("IQ3_XXS", x, imp)
    np.testing.assert_array_equal(neg.reshape(32, 8).sum(1) % 2, 0)
    assert (neg[:8] == 1).all()
    # an odd group loses exactly one sign, on one of its smallest weights (importance is uniform)
    for g in range(32):
        seg = slice(8 * g, 8 * g + 8)
        wrong = np.flatnonzero(neg[seg] != (x[seg] < 0))
        if (x[seg] < 0).sum() % 2:
            assert wrong.size == 1 and wrong[0] in np.argsort(np.abs(x[seg]))[:2]
        else:
            assert wrong.size == 0
    got = dequantize(quantize(x[None], by_name("IQ3_XXS"), imp), by_name("IQ3_XXS"), (1, 256))[0]
    np.testing.assert_array_equal(np.signbit(got), neg.astype(bool))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_error_below_ggml(name, with_imatrix, rng):
    qtype = by_name(name)
    rows = (rng.standard_t(5, (8, 1024)) * 0.02).astype(np.float32)
    imp = (rng.gamma(0.5, 1.0, 1024) + 1e-3).astype(np.float32) if with_imatrix else None
    ours = dequantize(quantize(rows, qtype, imp), qtype, rows.shape)
    ref_raw = np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imp), np.uint8)
    ref = dequantize(ref_raw, qtype, rows.shape)
    weight = imp if imp is not None else 1.0
    e_ours = float((weight * np.square(rows - ours)).sum())
    e_ref = float((weight * np.square(rows - ref)).sum())
    assert e_ours < 0.97 * e_ref
