"""Encoded rows are not shrunk toward zero.

The measure is the importance-weighted projection <q,x>_w / <x,x>_w of a quantized row q on its
source row x: the gain a matrix-vector product carries on its signal. A least-squares fit of the
scales alone leaves it at 1 - (relative error), 0.85-0.95 at 1.5-2.5 bits, and through the
layers of a model that reads worse than ggml's reference quantizers, which land at 0.96-1.02
(docs/encoders.md). The bar: on SmolLM2's real ffn_down rows with llama-imatrix's matrix, every
K and i-quant type's mean projection is at least ggml's on the same rows minus 0.01, and at most
1.05.
"""
from __future__ import annotations

import libgguf
import numpy as np
import pytest

from lowbit.quant import imatrix as imx
from lowbit.quant.decode import dequantize
from lowbit.quant.encode import quantize
from lowbit.quant.gguffile import open_gguf
from lowbit.quant.types import all_types

from conftest import real_model, shared_data, type_params

SHRINK_FAMILIES = ("k", "iq1", "iq2", "iq3", "iq4")
TYPES = [t for t in all_types() if t.encode_row is not None and t.family in SHRINK_FAMILIES]
TENSOR = "blk.10.ffn_down.weight"     # SmolLM2's rows of 1536, the ones K and i-quants can take
ROW_STEP = 12                         # every 12th of its 576 rows: 48 rows, 73,728 weights


def projection(rows: np.ndarray, q: np.ndarray, imp: np.ndarray) -> float:
    """Mean over rows of <q,x>_w / <x,x>_w."""
    x = rows.astype(np.float64)
    w = imp.astype(np.float64)
    return float(((w * q * x).sum(1) / (w * x * x).sum(1)).mean())


@pytest.fixture(scope="module")
def smollm2_rows():
    g = open_gguf(real_model("smollm2-135m"))
    t = g.tensors[TENSOR]
    rows = dequantize(g.raw(TENSOR), t.qtype, t.shape)[::ROW_STEP]
    imp = imx.load(shared_data("smollm2-135m.wiki.valid.imatrix")).importance(TENSOR)
    return np.ascontiguousarray(rows, dtype=np.float32), np.asarray(imp, np.float32)


@pytest.mark.real
@type_params(TYPES)
def test_real_rows_are_not_shrunk(qtype, smollm2_rows):
    rows, imp = smollm2_rows
    ours = projection(rows, dequantize(quantize(rows, qtype, imp), qtype, rows.shape), imp)
    raw = np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imp), np.uint8)
    ref = projection(rows, dequantize(raw, qtype, rows.shape), imp)
    assert ref - 0.01 <= ours <= 1.05, f"{qtype.name}: projection {ours:.4f}, ggml's {ref:.4f}"
