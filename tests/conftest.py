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
