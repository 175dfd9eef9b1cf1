"""What the tests share: the registry's types, the real models and ../shared/data (which no
test may skip silently), and running the `lowbit` command in a subprocess.

LOWBIT_SKIP_REAL=1 skips every test that needs a real model or ../shared/data (marked `real`,
or calling real_model / shared_data), and the summary says how many; without it, a real model
that cannot be had or missing shared data is an error.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit.quant.types import all_types

ALL_TYPES = all_types()
QUANTIZED = [t for t in ALL_TYPES if not t.is_float]

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SKIP_REAL = os.environ.get("LOWBIT_SKIP_REAL") == "1"
SKIP_REASON = "LOWBIT_SKIP_REAL=1: needs the real models or ../shared/data"
MISSING_DATA = (f"{DATA} is missing: the evaluation texts, llama.cpp's token ids and importance "
                f"matrices the real-model tests compare against live there, next to the clone "
                f"(set LOWBIT_SKIP_REAL=1 to skip those tests)")


def type_params(types=ALL_TYPES):
    return pytest.mark.parametrize("qtype", types, ids=[t.name for t in types])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def real_model(name: str) -> Path:
    """Path of a real model, pulled into the user cache on first use. It cannot be skipped
    silently: if it cannot be had the test fails, unless LOWBIT_SKIP_REAL=1."""
    if SKIP_REAL:
        pytest.skip(SKIP_REASON)
    from lowbit.eval.model_store import pull
    try:
        return pull(name, progress=False)
    except Exception as e:
        pytest.fail(f"real model {name} cannot be had ({type(e).__name__}: {e}); "
                    f"set LOWBIT_SKIP_REAL=1 to skip the real-model tests", pytrace=False)


def shared_data(name: str) -> Path:
    """A file of ../shared/data; its absence is an error, unless LOWBIT_SKIP_REAL=1."""
    if SKIP_REAL:
        pytest.skip(SKIP_REASON)
    if not DATA.is_dir():
        pytest.fail(MISSING_DATA, pytrace=False)
    path = DATA / name
    if not path.exists():
        pytest.fail(f"{path} is missing from the shared data", pytrace=False)
    return path


@pytest.hookimpl(trylast=True)      # after -k / -m have deselected what will not run
def pytest_collection_modifyitems(config, items):
    real = [item for item in items if item.get_closest_marker("real")]
    if SKIP_REAL:
        for item in real:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
    elif real and not DATA.is_dir():
        raise pytest.UsageError(MISSING_DATA)   # one error before anything runs, not one per test


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and SKIP_REASON in str(r.longrepr[2])]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped because LOWBIT_SKIP_REAL=1 (they need "
                                    f"the real models or ../shared/data)", yellow=True)


def lowbit(*args, stdin: str | None = None, timeout: float = 900, env: dict | None = None):
    """Run `lowbit ARGS...` in a new process; the CompletedProcess (text stdout and stderr)."""
    return subprocess.run([sys.executable, "-m", "lowbit.eval.cli", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def assert_one_sentence(done, fragment: str = "") -> None:
    """Refused as bad input: exit status 1, one line on stderr (containing `fragment`), no traceback."""
    assert done.returncode == 1, done.stderr
    assert fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def real_looking_rows(rng, n_rows=8, n_cols=1024):
    """Heavy-tailed weights with a few strong columns and importance spread over decades."""
    rows = rng.standard_t(4, (n_rows, n_cols)) * 0.02
    rows[:, rng.choice(n_cols, 6, replace=False)] *= 8
    imp = rng.lognormal(0.0, 1.5, n_cols)
    return rows.astype(np.float32), imp.astype(np.float32)
