"""Hessian error feedback around the block encoders (quant/gptq.py)."""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.quant.encode import quantize
from lowbit.quant.gptq import GPTQError, gptq_quantize, output_error
from lowbit.quant.types import by_name

N_IN, N_OUT, N_TOK = 512, 48, 2048


def correlated_inputs(rng, n):
    """Activations whose channels are mixed (so H is far from diagonal) and uneven in size."""
    mix = np.random.default_rng(7).standard_normal((N_IN, N_IN)) * 0.1 + np.eye(N_IN)
    scale = np.exp(np.random.default_rng(8).standard_normal(N_IN))
    return (rng.standard_normal((n, N_IN)) @ mix) * scale


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x, held_out = correlated_inputs(rng, N_TOK), correlated_inputs(rng, N_TOK)
    w = (rng.standard_normal((N_OUT, N_IN)) / 25).astype(np.float32)
    return w, x.T @ x, held_out.T @ held_out


@pytest.mark.parametrize("name", ["Q4_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q6_K", "IQ2_XXS", "IQ2_S",
                                  "IQ3_XXS", "IQ1_M", "IQ4_XS"])
def test_feedback_lowers_held_out_output_error(problem, name):
    w, h, h_held_out = problem
    q = by_name(name)
    plain = quantize(w, q, (np.diagonal(h) / N_TOK).astype(np.float32))
    improved = gptq_quantize(w, q, h, N_TOK)
    # Measured on inputs the Hessian never saw: 0.67-0.82 of plain's error on these problems.
    assert output_error(w, improved, q, h_held_out) < 0.9 * output_error(w, plain, q, h_held_out)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "IQ2_XXS"])
def test_uncorrelated_inputs_leave_nothing_to_feed_back(problem, name):
    """With a diagonal Hessian no error moves: the bytes are plain encoding's, block for block."""
    w, h, _ = problem
    q = by_name(name)
    diag = np.diag(np.diagonal(h))
    assert np.array_equal(gptq_quantize(w, q, diag, N_TOK, damp=0.0),
                          quantize(w, q, (np.diagonal(h) / N_TOK).astype(np.float32)))


def test_dead_columns_stay_finite(problem):
    w, h, _ = problem
    h = h.copy()
    h[5, :] = h[:, 5] = 0.0          # a channel that never fired
    out = gptq_quantize(w, by_name("Q4_K"), h, N_TOK)
    assert out.shape == (N_OUT, by_name("Q4_K").row_bytes(N_IN))


def test_a_hessian_of_another_matrix_is_refused(problem):
    w, h, _ = problem
    with pytest.raises(GPTQError, match="the Hessian is 256 x 256 but the rows have 512 columns"):
        gptq_quantize(w, by_name("Q4_K"), h[:256, :256], N_TOK)
    with pytest.raises(GPTQError, match="over no tokens"):
        gptq_quantize(w, by_name("Q4_K"), h, 0)


def test_sequential_pass_writes_a_model_that_runs(tmp_path):
    """The layer-by-layer pass on a small model: every planned matrix reported, the kept
    encoding never worse on held-out inputs than plain, and quantize_model writes the encoded
    bytes as given into a file that runs."""
    from synthetic import build_model

    from lowbit.eval.layer_pass import layer_pass
    from lowbit.eval.loading import load_model
    from lowbit.eval.perplexity import perplexity
    from lowbit.quant.gguffile import open_gguf
    from lowbit.quant.quantize_model import make_plan, quantize_model
    from lowbit.quant.recipes import PlanOptions

    src_path = build_model(tmp_path / "m.gguf", "llama", "F16", embd_type="F16")
    src = open_gguf(src_path)
    opts = PlanOptions("Q4_K_M")
    choices = make_plan(src, opts)
    text = "the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 40
    model, tok = load_model(src_path)
    work = tmp_path / "work"
    work.mkdir()
    files, reports, _ = layer_pass(model, tok, src, {c.name: c.qtype for c in choices}, text, 32, 4, 2, work)
    layer_matrices = [c.name for c in choices if c.name.startswith("blk.") and len(src.tensors[c.name].shape) == 2]
    assert sorted(r.name for r in reports) == sorted(layer_matrices) == sorted(files)
    assert all(min(r.gptq_error, r.plain_error) == (r.gptq_error if r.kept == "gptq" else r.plain_error)
               for r in reports)
    summary = quantize_model(src, tmp_path / "out.gguf", PlanOptions("Q4_K_M"), encoded=files)
    out = open_gguf(summary.paths[0])
    name = layer_matrices[0]
    assert np.array_equal(out.raw(name).reshape(np.load(files[name]).shape), np.load(files[name]))
    m, t = load_model(summary.paths[0])
    assert np.isfinite(perplexity(m, t, text, 32, 2).ppl)


def test_short_calibration_text_is_refused(tmp_path):
    from synthetic import build_model

    from lowbit.eval.layer_pass import LayerPassError, layer_pass
    from lowbit.eval.loading import load_model
    from lowbit.quant.gguffile import open_gguf
    from lowbit.quant.quantize_model import make_plan
    from lowbit.quant.recipes import PlanOptions

    src_path = build_model(tmp_path / "m.gguf", "llama", "F16", embd_type="F16")
    src = open_gguf(src_path)
    model, tok = load_model(src_path)
    types = {c.name: c.qtype for c in make_plan(src, PlanOptions("Q4_K_M"))}
    with pytest.raises(LayerPassError, match="needs 5 to fit and 2 held out"):
        layer_pass(model, tok, src, types, "the cat sat on the mat. " * 6, 32, 5, 2, tmp_path)


def test_output_error_over_the_input_rows_equals_the_one_over_their_hessian():
    # Held-out inputs may be kept as rows X instead of H = X^T X: the same error, and the same
    # after scaling the columns (awq.scaled_statistics on either form).
    from lowbit.quant import awq
    from lowbit.quant.gptq import InputRows, quadratic_error
    rng = np.random.default_rng(3)
    x = correlated_inputs(rng, 300).astype(np.float32)
    e = rng.standard_normal((20, N_IN))
    h = x.astype(np.float64).T @ x.astype(np.float64)
    assert quadratic_error(e, InputRows(x)) == pytest.approx(quadratic_error(e, h), rel=1e-5)
    s = np.exp(rng.standard_normal(N_IN) * 0.3)
    rows_scaled, _ = awq.scaled_statistics(s, InputRows(x), None)
    h_scaled, _ = awq.scaled_statistics(s, h, None)
    assert quadratic_error(e, rows_scaled) == pytest.approx(quadratic_error(e, h_scaled), rel=1e-5)


@pytest.mark.parametrize("n", [200, 700])
def test_cholesky_by_halves_factors_and_inverts(n):
    from lowbit.quant.gptq import cholesky_and_inverse
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2 * n, n)) * np.exp(rng.standard_normal(n))
    h = x.T @ x + 0.01 * np.eye(n)
    low, inv = cholesky_and_inverse(h)
    assert np.allclose(np.triu(low, 1), 0) and np.allclose(np.triu(inv, 1), 0)
    np.testing.assert_allclose(low @ low.T, h, rtol=1e-9, atol=1e-9 * np.abs(h).max())
    np.testing.assert_allclose(inv @ low, np.eye(n), atol=1e-9)
    with pytest.raises(np.linalg.LinAlgError):
        cholesky_and_inverse(-h)


def test_feedback_keeps_query_and_key_rows_at_their_gain(problem):
    # Query and key rows are encoded at their least-squares gain (quant/score_gain.py); the
    # feedback's encoding of them must sit there too, not at the lift other rows carry.
    from lowbit.eval.layer_pass import _encode_matrix
    from lowbit.quant.decode import dequantize
    from lowbit.quant.score_gain import least_squares_gain
    w, h, h_held_out = problem
    q = by_name("IQ2_XXS")
    imp = (np.diagonal(h) / N_TOK).astype(np.float32)
    lifted = least_squares_gain(w, dequantize(gptq_quantize(w, q, h, N_TOK, importance=imp), q, w.shape), imp)
    report, kept = _encode_matrix("blk.0.attn_k.weight", w, q, h, N_TOK, h_held_out, imp, True, 0.01)
    assert report.kept == "gptq"
    gain = least_squares_gain(w, dequantize(kept, q, w.shape), imp)
    assert lifted.mean() < 0.97 and abs(gain.mean() - 1) < 0.015, (lifted.mean(), gain.mean())
