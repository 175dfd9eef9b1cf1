"""The suite's own rules, run in a pytest of their own next to a copy of tests/conftest.py:
a real model that cannot be had fails its test, missing shared data is one error before anything
runs, and LOWBIT_SKIP_REAL=1 skips those tests and says so in the summary."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

REAL_TESTS = '''
import pytest
from conftest import real_model, shared_data

def test_model_that_cannot_be_had():
    real_model("no-such-model")

def test_model_whose_pull_fails(monkeypatch):
    from lowbit.eval import model_store
    def broken(name, progress=True):
        raise model_store.ModelStoreError("sha256 of the download does not match")
    monkeypatch.setattr(model_store, "pull", broken)
    real_model("smollm2-135m")

def test_shared_file():
    shared_data("wiki.test.raw")

@pytest.mark.real
def test_marked_real():
    pass

def test_plain():
    pass
'''


@pytest.fixture
def suite(pytester):
    # pytester's folder has no ../shared/data next to it: the copied conftest sees none
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=REAL_TESTS)
    return pytester


def test_missing_shared_data_is_one_error_before_anything_runs(suite, monkeypatch):
    monkeypatch.delenv("LOWBIT_SKIP_REAL", raising=False)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "shared/data is missing" in err and "LOWBIT_SKIP_REAL=1" in err, err
    assert "Traceback" not in err
    result.stdout.no_fnmatch_line("*passed*")


def test_unobtainable_model_and_missing_data_fail_not_skip(suite, monkeypatch):
    monkeypatch.delenv("LOWBIT_SKIP_REAL", raising=False)
    # without a `real`-marked test the run starts; each helper then fails its own test
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-k", "not marked_real")
    result.assert_outcomes(failed=3, passed=1)
    out = result.stdout.str()
    assert "real model no-such-model cannot be had (ModelStoreError: unknown model" in out
    assert "sha256 of the download does not match" in out
    assert "shared/data is missing" in out
    assert "skipped" not in out


def test_skip_real_skips_and_counts(suite, monkeypatch):
    monkeypatch.setenv("LOWBIT_SKIP_REAL", "1")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=4, passed=1)
    result.stdout.fnmatch_lines(["*4 tests skipped because LOWBIT_SKIP_REAL=1*"])
