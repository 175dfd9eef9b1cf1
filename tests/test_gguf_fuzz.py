"""Fuzzing the GGUF reader (and `lowbit inspect`'s report) and the model loader with seeded
random damage to a small file.

Every mutation (truncations, bit flips, lying counts and lengths, offsets, dimensions, value,
item and tensor types, versions, hyperparameters, NaN weights) must be refused with a one-line
LowbitError or load correctly, in bounded time and memory: any other exception fails the test
with the mutation that caused it.
"""
from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

from lowbit.eval.inspect_model import format_report, report
from lowbit.quant.errors import LowbitError
from lowbit.quant.gguffile import open_gguf

from gguf_damage import field_map, put, set_f16, set_scalar
from synthetic import build_model

CASES = 300                 # reader mutations
MODEL_CASES = 24            # mutations of what the model loader reads (hyperparameters, weights)
SECONDS_PER_CASE = 30.0     # a hang, not a slow machine
MEMORY_PER_CASE = 64 << 20  # bytes traced by tracemalloc (numpy arrays included)

LIES = (0, 1, 2, 3, 7, 255, 256, 2**16, 2**31 - 1, 2**32 - 1, 2**32, 2**40, 2**63, 2**64 - 1)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = build_model(tmp_path_factory.mktemp("fuzz") / "m.gguf", "llama", "Q4_0", n_layer=1,
                       n_embd=64, n_ff=128, n_head=2, n_head_kv=1, embd_type="Q8_0")
    data = path.read_bytes()
    return data, field_map(data)


def mutate(rng: np.random.Generator, data: bytes, m) -> tuple[str, bytes]:
    """One random mutation of the reader's classes; (what was done, the bytes)."""
    d = bytearray(data)
    kind = rng.choice(["truncate", "flip", "count", "length", "offset", "dims", "value type",
                       "item type", "tensor type", "version", "n_dims"])
    if kind == "truncate":
        at = int(rng.integers(0, len(d)))
        return f"truncated at {at}", bytes(d[:at])
    if kind == "flip":
        flips = []
        for _ in range(int(rng.integers(1, 9))):
            # mostly in the header, where a flipped bit changes what the file says
            at = int(rng.integers(0, m.header_end if rng.random() < 0.9 else len(d)))
            bit = int(rng.integers(0, 8))
            d[at] ^= 1 << bit
            flips.append(f"{at}.{bit}")
        return f"bits flipped at {', '.join(flips)}", bytes(d)
    lie = LIES[int(rng.integers(len(LIES)))] if rng.random() < 0.7 else int(rng.integers(0, 2**20))
    kv = m.kvs[str(rng.choice(list(m.kvs)))]
    t = m.tensors[str(rng.choice(list(m.tensors)))]
    if kind == "count":
        where = rng.choice(["tensors", "kv", "array"])
        if where == "array":
            arr = m.kvs[str(rng.choice([k for k, a in m.kvs.items() if a.count_at is not None]))]
            return f"{arr.key} count {lie}", bytes(put(d, arr.count_at, "<Q", lie))
        at = m.n_tensors_at if where == "tensors" else m.n_kv_at
        return f"{where} count {lie}", bytes(put(d, at, "<Q", lie))
    if kind == "length":
        if rng.random() < 0.5:
            return f"key {kv.key} length {lie}", bytes(put(d, kv.key_len_at, "<Q", lie))
        return f"tensor {t.name} name length {lie}", bytes(put(d, t.name_len_at, "<Q", lie))
    if kind == "offset":
        value = lie if rng.random() < 0.5 else t.offset + int(rng.integers(-64, 65))
        return f"tensor {t.name} offset {value}", bytes(put(d, t.offset_at, "<Q", value % 2**64))
    if kind == "dims":
        i = int(rng.integers(0, len(t.dims_at)))
        return f"tensor {t.name} dim {i} = {lie}", bytes(put(d, t.dims_at[i], "<Q", lie))
    if kind == "value type":
        value = int(rng.integers(0, 16))
        return f"{kv.key} value type {value}", bytes(put(d, kv.type_at, "<I", value))
    if kind == "item type":
        arr = m.kvs[str(rng.choice([k for k, a in m.kvs.items() if a.item_type is not None]))]
        value = int(rng.integers(0, 16))
        return f"{arr.key} item type {value}", bytes(put(d, arr.value_at, "<I", value))
    if kind == "tensor type":
        value = int(rng.integers(0, 45))
        return f"tensor {t.name} type {value}", bytes(put(d, t.type_at, "<I", value))
    if kind == "version":
        value = int(rng.choice([0, 1, 2, 3, 4, 0x03000000, lie % 2**32]))
        return f"version {value}", bytes(put(d, m.version_at, "<I", value))
    value = int(rng.integers(0, 9))
    return f"tensor {t.name} n_dims {value}", bytes(put(d, t.n_dims_at, "<I", value))


HYPERPARAMETERS = ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                   "llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length",
                   "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
                   "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]


def mutate_model(rng: np.random.Generator, data: bytes, m) -> tuple[str, bytes]:
    """A mutation of what only loading the model can see: a hyperparameter or a weight."""
    d = bytearray(data)
    if rng.random() < 0.6:
        key = str(rng.choice([k for k in HYPERPARAMETERS if k in m.kvs]))
        float_key = m.kvs[key].vtype == 6
        value = (float(rng.choice([0.0, -1.0, math.nan, math.inf, 1e-30, 1e30])) if float_key
                 else int(rng.choice([0, 1, 2, 3, 5, 63, 65, 100, 1000, 2**31 - 1, 2**32 - 1])))
        return f"{key} = {value}", bytes(set_scalar(d, m, key, value))
    name = str(rng.choice(list(m.tensors)))
    t = m.tensors[name]
    at = m.tensor_data_at(name)
    value = float(rng.choice([math.nan, math.inf, -math.inf]))
    if t.type_id == 0:   # F32: a value anywhere
        return f"{name}[0] = {value}", bytes(put(d, at + 4 * int(rng.integers(0, t.dims[0])), "<f", value))
    return f"{name} first block scale = {value}", bytes(set_f16(d, at, value))   # Q4_0 / Q8_0: d first


def outcome(path, load_model: bool) -> str:
    """'refused' (a one-line LowbitError) or 'loaded'; anything else propagates."""
    try:
        g = open_gguf(path)
        for name, info in g.tensors.items():
            assert g.raw(name).size == info.n_bytes
        format_report(report(g), g, with_tensors=True)     # what `lowbit inspect` shows
        if load_model:
            from lowbit.runtime.model import Model
            from lowbit.runtime.tokenizer import Tokenizer
            model = Model(g)
            tok = Tokenizer(g.metadata)
            ids = tok.encode("the cat sat", add_special=True) or [0]
            logits = model.forward(ids, model.new_cache(8))
            assert np.isfinite(logits).all(), "a loaded model gave non-finite logits"
        return "loaded"
    except LowbitError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return "refused"


def run_cases(tmp_path, original, n, mutator, load_model, seed):
    data, fields = original
    rng = np.random.default_rng(seed)
    path = tmp_path / "mutant.gguf"
    seen = {"refused": 0, "loaded": 0}
    tracemalloc.start()
    try:
        for i in range(n):
            what, mutant = mutator(rng, data, fields)
            path.write_bytes(mutant)
            tracemalloc.reset_peak()
            start = time.perf_counter()
            try:
                seen[outcome(path, load_model)] += 1
            except Exception as e:
                raise AssertionError(f"case {i} ({what}): {type(e).__name__}: {e}") from e
            took = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            assert took < SECONDS_PER_CASE, f"case {i} ({what}) took {took:.1f} s"
            assert peak < MEMORY_PER_CASE, f"case {i} ({what}) held {peak / 2**20:.0f} MiB"
    finally:
        tracemalloc.stop()
    return seen


def test_reader_refuses_or_loads_every_mutation(tmp_path, original):
    seen = run_cases(tmp_path, original, CASES, mutate, load_model=False, seed=20261129)
    # both outcomes occur: the mutations reach past the magic, and some damage is harmless
    assert seen["refused"] > CASES // 2 and seen["loaded"] > 0, seen


def test_model_loader_refuses_or_runs_every_mutation(tmp_path, original):
    intact = tmp_path / "intact.gguf"
    intact.write_bytes(original[0])
    assert outcome(intact, True) == "loaded"   # (and the kernels compile before the timed cases)
    seen = run_cases(tmp_path, original, MODEL_CASES, mutate_model, load_model=True, seed=7)
    assert seen["refused"] > MODEL_CASES // 2, seen
