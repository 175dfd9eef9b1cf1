"""K-quant encoders (Q2_K .. Q6_K): packing, the codes the search settles on, quality vs ggml.

The generic checks (random rows within 1.05x of libgguf, zeros, outliers, bad input) are in
test_encoders.py; here: the bit packers invert the decoders' readers, the super-block search
returns codes in range whose values are exactly what the bytes decode to, and on rows shaped
like real weights the error beats ggml's reference quantizers.
"""
from __future__ import annotations

import libgguf
import numpy as np
import pytest
from numba import njit

from lowbit.quant.decode import dequantize
from lowbit.quant.encode import quantize
from lowbit.quant.formats import fits
from lowbit.quant.formats import kquants as K
from lowbit.quant.types import by_name

from conftest import real_looking_rows, real_model, type_params
from synthetic import reference_decode

KQUANTS = [by_name(n) for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")]
# (sub-blocks, their size, quant max, scale code max) of the affine types
AFFINE = {"Q2_K": (16, 16, 3, 15), "Q4_K": (8, 32, 15, 63), "Q5_K": (8, 32, 31, 63)}
# (quant range, scale code range, scan length) of the signed types
SIGNED = {"Q3_K": (-4, 3, -32, 31, K.Q3K_SCAN, K.Q3K_STARTS), "Q6_K": (-32, 31, -128, 127, K.Q6K_SCAN, K.Q6K_STARTS)}


@njit
def _pack_read(kind, vals, n_bytes):
    """Pack vals with one of the module's writers, then read them back with the decoder's."""
    out = np.zeros(n_bytes, np.uint8)
    back = np.empty_like(vals)
    for i in range(vals.shape[0]):
        if kind == 0:
            K.put_crumb(out, 0, i, vals[i])
        elif kind == 1:
            K.put_nibble(out, 0, i, vals[i])
        elif kind == 2:
            K.put_high_bit(out, 0, i, vals[i])
        else:
            K.put_q3k_scale(out, 0, i, vals[i])
    for i in range(vals.shape[0]):
        if kind == 0:
            back[i] = K.crumb(out, 0, i)
        elif kind == 1:
            back[i] = K.nibble(out, 0, i)
        elif kind == 2:
            back[i] = K.high_bit(out, 0, i)
        else:
            back[i] = K.q3k_scale(out, 0, i)
    return back


@njit
def _whole_block_reads(w):
    """The load-time readers of a whole block (crumbs256, nibbles256, add_high_bits) against the
    decoders' per-weight ones, on the same bytes."""
    u = np.zeros((3, 256), np.uint8)
    want = np.zeros((3, 256), np.uint8)
    K.crumbs256(w, 0, u[0])
    K.nibbles256(w, 0, u[1])
    K.add_high_bits(w, 0, u[2], 3)
    for i in range(256):
        want[0, i] = K.crumb(w, 0, i)
        want[1, i] = K.nibble(w, 0, i)
        want[2, i] = K.high_bit(w, 0, i) << 3
    return u, want


def test_whole_block_readers_equal_the_per_weight_ones(rng):
    u, want = _whole_block_reads(rng.integers(0, 256, 128).astype(np.uint8))
    np.testing.assert_array_equal(u, want)


@pytest.mark.parametrize("kind, n, lo, hi, n_bytes", [
    (0, 256, 0, 3, 64), (1, 256, 0, 15, 128), (2, 256, 0, 1, 32), (3, 16, -32, 31, 12)])
def test_bit_packers_invert_the_readers(kind, n, lo, hi, n_bytes, rng):
    vals = rng.integers(lo, hi + 1, n).astype(np.int64)
    vals[:2] = lo, hi
    np.testing.assert_array_equal(_pack_read(kind, vals, n_bytes), vals)


@njit
def _scale_min_round_trip(sc, mn):
    out = np.zeros(12, np.uint8)
    K.put_scale_min_k4(out, 0, sc, mn)
    back = np.empty((8, 2), np.int64)
    for j in range(8):
        back[j, 0], back[j, 1] = K.scale_min_k4(out, 0, j)
    return back


def test_six_bit_scale_min_packing_round_trips(rng):
    for _ in range(50):
        sc = rng.integers(0, 64, 8).astype(np.int32)
        mn = rng.integers(0, 64, 8).astype(np.int32)
        sc[rng.integers(8)] = 63  # the high bits of both halves get exercised
        back = _scale_min_round_trip(sc, mn)
        np.testing.assert_array_equal(back[:, 0], sc)
        np.testing.assert_array_equal(back[:, 1], mn)


SPREAD = {"Q2_K": K.Q2K_SPREAD, "Q3_K": K.Q3K_SPREAD}


def block_weights(imp, b, name, row):
    """The error weights the encoder gives block b of a row."""
    w = np.empty(256, np.float32)
    imp = np.zeros(0, np.float32) if imp is None else imp
    fits.block_weights(row, imp, b * 256, 256, w)
    if name in SPREAD:
        fits.favour_large(row, b * 256, 256, w, SPREAD[name])
    return w


@pytest.mark.parametrize("name", list(AFFINE))
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_affine_codes_are_in_range_and_decode_as_searched(name, with_imatrix, rng):
    nsub, sub, nmax, smax = AFFINE[name]
    qtype = by_name(name)
    rows, imp = real_looking_rows(rng, 2, 512)
    rows[1, :256] = np.abs(rows[1, :256]) + 0.01  # a block with no negative weight
    imp = imp if with_imatrix else None
    search = K.FULL_SEARCH if name != "Q2_K" or with_imatrix else K.SHORT_SEARCH
    decoded = dequantize(quantize(rows, qtype, imp), qtype, rows.shape)
    for r in range(rows.shape[0]):
        for b in range(rows.shape[1] // 256):
            x = rows[r, b * 256:(b + 1) * 256].copy()
            sc = np.empty(nsub, np.int32)
            mn = np.empty(nsub, np.int32)
            L = np.empty(256, np.int32)
            d, dm = K._encode_affine_block(x, block_weights(imp, b, name, rows[r]), nsub, sub, nmax, smax,
                                           sc, mn, L, K.affine_block_scratch(nsub, sub), search)
            assert d == np.float16(d) and dm == np.float16(dm) and d >= 0 and dm >= 0
            assert sc.min() >= 0 and sc.max() <= smax and mn.min() >= 0 and mn.max() <= smax
            assert L.min() >= 0 and L.max() <= nmax
            j = np.arange(256) // sub
            values = (np.float32(d) * sc[j].astype(np.float32)) * L.astype(np.float32) \
                - np.float32(dm) * mn[j].astype(np.float32)
            np.testing.assert_array_equal(values, decoded[r, b * 256:(b + 1) * 256])


@pytest.mark.parametrize("name", list(SIGNED))
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_signed_codes_are_in_range_and_decode_as_searched(name, with_imatrix, rng):
    qlo, qhi, slo, shi, scan, starts = SIGNED[name]
    qtype = by_name(name)
    rows, imp = real_looking_rows(rng, 2, 512)
    imp = imp if with_imatrix else None
    decoded = dequantize(quantize(rows, qtype, imp), qtype, rows.shape)
    for r in range(rows.shape[0]):
        for b in range(rows.shape[1] // 256):
            x = rows[r, b * 256:(b + 1) * 256].copy()
            sc = np.empty(16, np.int32)
            L = np.empty(256, np.int32)
            d = K._encode_signed_block(x, block_weights(imp, b, name, rows[r]), 16, 16, qlo, qhi, slo, shi,
                                       scan, starts, sc, L, K.signed_scratch(16, 16))
            assert d == np.float16(d)
            assert sc.min() >= slo and sc.max() <= shi and L.min() >= qlo and L.max() <= qhi
            values = (np.float32(d) * np.repeat(sc, 16).astype(np.float32)) * L.astype(np.float32)
            np.testing.assert_array_equal(values, decoded[r, b * 256:(b + 1) * 256])


@pytest.mark.parametrize("name", list(SIGNED))
def test_side_by_side_signed_fits_equal_the_one_at_a_time_fit(name, rng):
    # The super-block's sub-blocks are fitted in vector lanes; each lane's result is the scale
    # fits.fit_signed finds for that sub-block alone (up to the order of its sums).
    qlo, qhi, slo, shi, scan, starts = SIGNED[name]
    rows, imp = real_looking_rows(rng, 4, 512)
    rows[0, :16] = 0.0   # an all-zero sub-block
    scratch = K.signed_scratch(16, 16)
    xt, wt, lanes, _, _, live = scratch
    for r in range(rows.shape[0]):
        for b in range(rows.shape[1] // 256):
            x = rows[r, b * 256:(b + 1) * 256].copy()
            w = block_weights(imp, b, name, rows[r])
            K._transpose(x, w, 16, 16, xt, wt)
            K._fit_signed_lanes(xt, wt, qlo, qhi, scan, lanes, live)
            L = np.empty(256, np.int32)
            alone = [fits.fit_signed(x, w, j * 16, 16, qlo, qhi, scan, L) for j in range(16)]
            np.testing.assert_allclose(lanes[0], alone, rtol=1e-6)
            wl2 = [float((w[j * 16:(j + 1) * 16] * L[j * 16:(j + 1) * 16].astype(np.float64) ** 2).sum())
                   for j in range(16)]
            np.testing.assert_allclose(lanes[1], wl2, rtol=1e-6)


@type_params(KQUANTS)
def test_encoding_a_decoded_row_again_loses_almost_nothing(qtype, rng):
    # A row on the type's own grid is (nearly) a fixed point: the search finds its codes again.
    rows, _ = real_looking_rows(rng, 4, 512)
    once = dequantize(quantize(rows, qtype), qtype, rows.shape)
    twice = dequantize(quantize(once, qtype), qtype, rows.shape)
    first = np.square(rows - once).sum()
    assert np.square(once - twice).sum() <= 0.02 * first


def error(rows, q, imp):
    d2 = np.square(rows.astype(np.float64) - q.astype(np.float64))
    return float((d2 * (imp if imp is not None else 1.0)).sum())


def ratio_to_ggml(rows, imp, qtype):
    ours = dequantize(quantize(rows, qtype, imp), qtype, rows.shape)
    ref = reference_decode(np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imp),
                                      np.uint8), qtype)
    return error(rows, ours, imp) / error(rows, ref, imp)


@type_params(KQUANTS)
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_beats_ggml_on_real_looking_rows(qtype, with_imatrix, rng):
    rows, imp = real_looking_rows(rng, 16, 1024)
    assert ratio_to_ggml(rows, imp if with_imatrix else None, qtype) < 1.0


@pytest.mark.real
@type_params(KQUANTS)
def test_beats_ggml_on_real_rows(qtype):
    from lowbit.quant.gguffile import open_gguf
    g = open_gguf(real_model("smollm2-135m"))
    name = "blk.3.ffn_down.weight"
    t = g.tensors[name]
    rows = dequantize(g.raw(name), t.qtype, t.shape)[:64]
    imp = np.mean(np.square(rows), axis=0) + 1e-3  # a stand-in importance: no imatrix needed
    assert ratio_to_ggml(rows, imp.astype(np.float32), qtype) < 1.0
    assert ratio_to_ggml(rows, None, qtype) < 1.0
