"""Stopping a long command with a real signal, and the progress a log can read.

SIGINT (Ctrl-C) and SIGTERM sent to `lowbit quantize`, `lowbit imatrix` and `lowbit ladder`
while they work leave no partial output file, exit with 130 / 143 and one line; a stopped
ladder resumes where it was. Without a terminal, the same commands write progress lines with
the time elapsed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import lowbit
from synthetic import build_model

TEXT = "the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 200
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def model_and_text(folder, name, **dims):
    """An F16 model of the given size (the quantizers' work grows with it) and a text."""
    model = build_model(folder / f"{name}.gguf", "llama", "F16", embd_type="F16", n_head=8,
                        n_head_kv=4, **dims)
    text = folder / "t.txt"
    text.write_text(TEXT)
    return model, text


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Its quantization to IQ3_XXS takes long enough to be stopped while writing."""
    return model_and_text(tmp_path_factory.mktemp("signals"), "big", n_layer=4, n_embd=1024, n_ff=2816)


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    """For the commands run to the end (IQ3_XXS still takes seconds)."""
    return model_and_text(tmp_path_factory.mktemp("signals-mid"), "mid", n_layer=2, n_embd=512, n_ff=1408)


class Running:
    """A `lowbit` command running in the background, its stderr in a file to watch."""

    def __init__(self, tmp_path, *args, env=None):
        self.log = tmp_path / "stderr.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "lowbit.eval.cli", *map(str, args)],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)

    def poll(self):
        return self.proc.poll()

    def said(self, text: str) -> bool:
        return text in self.log.read_text()


def wait_for(condition, run, timeout=600):
    end = time.monotonic() + timeout
    while not condition():
        assert run.poll() is None, f"the command ended before the signal: {run.log.read_text()}"
        assert time.monotonic() < end, "the moment to send the signal never came"
        time.sleep(0.05)


def stop(run, sig):
    """Send the signal; the command's stderr once it has ended."""
    run.proc.send_signal(sig)
    run.proc.wait(timeout=300)
    err = run.log.read_text()
    assert run.proc.returncode == EXIT[sig], err
    assert "Traceback" not in err, err
    return err


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_quantize_stopped_while_writing_leaves_nothing(big, tmp_path, sig):
    model, _ = big
    out = tmp_path / "q.gguf"
    run = Running(tmp_path, "quantize", model, out, "IQ3_XXS", "--pure", "-t", "1")
    # the output is open from the first tensor on (unnamed where the system allows)
    wait_for(lambda: run.said("quantize IQ3_XXS:  10 %"), run)
    err = stop(run, sig)
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert err.strip().splitlines()[-1] == f"lowbit quantize: {word}"
    assert not out.exists() and leftovers(tmp_path) == []


def test_imatrix_stopped_writes_nothing(big, tmp_path):
    model, text = big
    out = tmp_path / "m.imatrix"
    run = Running(tmp_path, "imatrix", model, "-f", text, "-o", out, "-c", "64", "-t", "1")
    wait_for(lambda: run.said("imatrix: "), run)       # the first progress line: collecting
    stop(run, signal.SIGTERM)
    assert not out.exists() and leftovers(tmp_path) == []


def test_ladder_stopped_then_resumed(mid, tmp_path):
    model, text = mid
    out = tmp_path / "lad"
    args = ("ladder", model, "-f", text, "--calib", text, "--calib-chunks", "2", "--types", "Q8_0,IQ3_XXS",
            "-o", out, "-c", "64", "--chunks", "2", "-t", "1", "--bench-prompt", "0", "--bench-gen", "0")
    run = Running(tmp_path, *args)
    # stopped while the second entry is being written
    wait_for(lambda: run.said("IQ3_XXS/imatrix: quantize"), run)
    stop(run, signal.SIGTERM)
    assert leftovers(out) == [] and not (out / "mid-IQ3_XXS.gguf").exists()
    first = json.loads((out / "results.json").read_text())
    assert list(first["entries"]) == ["Q8_0/imatrix"]
    done = lowbit(*args)
    assert done.returncode == 0, done.stderr
    assert "Q8_0/imatrix: quantize" not in done.stderr     # the finished entry is not redone
    data = json.loads((out / "results.json").read_text())
    assert data["entries"]["IQ3_XXS/imatrix"]["status"] == "ok"
    # paths are kept relative to the ladder's folder
    assert data["entries"]["IQ3_XXS/imatrix"]["file"] == "mid-IQ3_XXS.gguf"
    assert data["settings"]["imatrix"] == "imatrix.gguf"
    assert data["settings"]["model"] == os.path.relpath(model, out)


def test_progress_lines_without_a_terminal(mid, tmp_path):
    model, text = mid
    done = lowbit("quantize", model, tmp_path / "q.gguf", "Q4_K", "-t", "1")
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("quantize Q4_K:")]
    percents = [int(re.search(r"(\d+) %", ln).group(1)) for ln in lines]
    # a line at each tenth reached (a big tensor may pass two at once), the last at 100 %
    assert len(percents) >= 5 and percents[-1] == 100, done.stderr
    assert all(p % 10 == 0 for p in percents) and percents == sorted(set(percents)), done.stderr
    assert all(re.search(r"\d+ s elapsed", ln) for ln in lines)
    done = lowbit("imatrix", model, "-f", text, "-o", tmp_path / "m.imatrix", "-c", "64", "--chunks", "10",
                  "-t", "1")
    assert done.returncode == 0, done.stderr
    assert "imatrix: 100 % (10 of 10 chunks)" in done.stderr and "s elapsed" in done.stderr


class FakeFrame:
    def __init__(self, filename, back=None):
        self.f_code = type("Code", (), {"co_filename": filename})()
        self.f_back = back


def test_a_signal_inside_an_llvm_callback_is_raised_again_after_it():
    # ctypes prints and drops an exception raised in a callback (numba compiling: llvmlite's
    # object cache callback), so the handler sends the signal again instead of raising there
    from lowbit.eval.cli import common

    inside = FakeFrame("/x/numba/core/codegen.py", FakeFrame("/x/llvmlite/binding/executionengine.py"))
    assert common._in_native_callback(inside)
    assert not common._in_native_callback(FakeFrame("/x/numba/core/codegen.py", FakeFrame("/x/quant/encode.py")))
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        common.on_signals_unwind()
        with pytest.raises(common.Terminated):
            common._on_signal(signal.SIGTERM, FakeFrame("/x/quant/encode.py"))
        with pytest.raises(KeyboardInterrupt):
            common._on_signal(signal.SIGINT, inside)          # returns; the signal comes back
            time.sleep(5)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_interrupted_while_compiling(big, tmp_path):
    # a cold kernel cache: the signal arrives while numba compiles the encoder
    model, _ = big
    out = tmp_path / "q.gguf"
    run = Running(tmp_path, "quantize", model, out, "IQ3_XXS", "--pure", "-t", "1",
                  env={**os.environ, "LOWBIT_CACHE_DIR": str(tmp_path / "cache")})
    # the first kernel written to the cache: the encoder's others are still compiling
    wait_for(lambda: any(p.is_file() for p in (tmp_path / "cache").rglob("*")), run)
    assert not run.said("quantize IQ3_XXS:")
    err = stop(run, signal.SIGINT)
    assert err.strip().splitlines()[-1] == "lowbit quantize: interrupted"
    assert not out.exists() and leftovers(tmp_path) == []
