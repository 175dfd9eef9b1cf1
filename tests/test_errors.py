"""User errors and bugs: every error a user can cause is a LowbitError, printed by the command
as one sentence with exit status 1; anything else (a bug) keeps its traceback."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import lowbit.eval
import lowbit.quant
import lowbit.runtime
from lowbit.quant.errors import LowbitError

from conftest import assert_one_sentence, lowbit as run_lowbit
from synthetic import build_model

# Errors that are bugs when they happen, not bad input: no LowbitError.
BUG_ERRORS = {"lowbit.runtime.kernels.matrix.KernelError"}


def project_error_classes() -> dict[str, type]:
    found = {}
    infos = [info for package in (lowbit.quant, lowbit.runtime, lowbit.eval)
             for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for info in infos:
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__.startswith("lowbit."):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_user_error_is_a_lowbit_error():
    classes = project_error_classes()
    assert len(classes) > 15
    for name, cls in classes.items():
        if name in BUG_ERRORS:
            assert not issubclass(cls, LowbitError), name
        else:
            assert issubclass(cls, LowbitError), f"{name} is not a LowbitError"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("errors")
    text = d / "t.txt"
    text.write_text("the cat sat on the mat and then the dog ate the cat. " * 20)
    return build_model(d / "m.gguf", "llama", "Q4_0"), text


def test_an_injected_shape_bug_shows_its_traceback(tiny):
    """A bug inside a kernel wrapper (one output row short) must not pass for bad input."""
    model, text = tiny
    code = f"""
import sys
from lowbit.runtime.kernels import matrix
real = matrix.QuantMatrix.matmul_quantized
def one_row_short(self, qa, out=None):
    return real(self, qa)[:, :-1]
matrix.QuantMatrix.matmul_quantized = one_row_short
from lowbit.eval.cli import main
sys.exit(main(["perplexity", {str(model)!r}, "-f", {str(text)!r}, "-c", "32", "--chunks", "1"]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr, done.stderr
    assert "residual_norm: shapes do not fit" in done.stderr   # the kernel wrapper's check
    assert "lowbit perplexity: error" not in done.stderr


def test_a_structured_error_gets_its_flag_from_the_command(tiny):
    model, _ = tiny
    done = run_lowbit("generate", model, "-p", "the cat sat on the mat " * 20, "-c", "16")
    assert_one_sentence(done, "the prompt needs")
    assert "raise -c or shorten the prompt" in done.stderr
