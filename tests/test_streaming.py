"""Quantization in bounded memory: tensors go through in chunks of rows, and the peak resident
set (file-backed pages included) does not grow with the number of layers."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lowbit.quant import quantize_model as qm
from lowbit.quant.gguffile import open_gguf
from lowbit.quant.recipes import PlanOptions

from synthetic import build_model

WIDE = dict(n_embd=1024, n_ff=2048, n_head=8, n_head_kv=2)


def test_chunked_encoding_equals_whole_tensors(tmp_path, monkeypatch):
    src = build_model(tmp_path / "f16.gguf", "llama", "F16", embd_type="F16", n_layer=1)
    g = open_gguf(src)
    whole = qm.quantize_model(g, tmp_path / "whole.gguf", PlanOptions("Q4_K_M")).paths[0]
    seen = []
    monkeypatch.setattr(qm, "CHUNK_BYTES", 7 * 4 * 256)   # 7 rows of 256 columns: ragged last chunks
    monkeypatch.setattr(qm, "release_mapped_pages", lambda a: seen.append(a.shape[0]))
    chunked = qm.quantize_model(g, tmp_path / "chunked.gguf", PlanOptions("Q4_K_M")).paths[0]
    assert chunked.read_bytes() == whole.read_bytes()
    assert max(seen) > 7 and 7 in seen and any(0 < n < 7 for n in seen)   # chunks, then each whole tensor


def peak_rss_mib(*args) -> float:
    """Peak resident set of a child process (its VmHWM: ru_maxrss), in MiB."""
    child = subprocess.Popen([sys.executable, "-m", "lowbit.eval.cli", *map(str, args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, child.stderr.read().decode()
    child.stderr.close()
    return usage.ru_maxrss / 1024


def test_peak_memory_is_flat_in_the_number_of_layers(tmp_path):
    small = build_model(tmp_path / "l2.gguf", "llama", "F16", embd_type="F16", n_layer=2, **WIDE)
    large = build_model(tmp_path / "l8.gguf", "llama", "F16", embd_type="F16", n_layer=8, **WIDE)
    grown = (large.stat().st_size - small.stat().st_size) / 2**20
    assert grown > 100
    out = tmp_path / "q.gguf"
    peak_rss_mib("quantize", small, out, "Q8_0", "-t", "1")   # compiles, if the cache is cold
    a = peak_rss_mib("quantize", small, out, "Q8_0", "-t", "1")
    b = peak_rss_mib("quantize", large, out, "Q8_0", "-t", "1")
    # holding the source (or the output) in memory would add all of `grown`
    assert b - a < 0.2 * grown, f"peak {a:.0f} MiB for 2 layers, {b:.0f} MiB for 8 ({grown:.0f} MiB more source)"
