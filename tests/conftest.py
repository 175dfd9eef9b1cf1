from __future__ import annotations

import numpy as np
import pytest

from lowbit.quant.types import all_types

ALL_TYPES = all_types()
QUANTIZED = [t for t in ALL_TYPES if not t.is_float]


def type_params(types=ALL_TYPES):
    return pytest.mark.parametrize("qtype", types, ids=[t.name for t in types])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def real_model(name: str):
    """Path of a real model, pulled into the user cache on first use (marked tests only)."""
    from lowbit.eval.model_store import pull
    try:
        return pull(name, progress=False)
    except Exception as e:  # offline machine: say so rather than fail obscurely
        pytest.skip(f"real model {name} unavailable: {e}")


def real_looking_rows(rng, n_rows=8, n_cols=1024):
    """Heavy-tailed weights with a few strong columns and importance spread over decades."""
    rows = rng.standard_t(4, (n_rows, n_cols)) * 0.02
    rows[:, rng.choice(n_cols, 6, replace=False)] *= 8
    imp = rng.lognormal(0.0, 1.5, n_cols)
    return rows.astype(np.float32), imp.astype(np.float32)
