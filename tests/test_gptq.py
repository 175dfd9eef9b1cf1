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
