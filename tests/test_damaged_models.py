"""A corpus of damaged copies of the real SmolLM2 file, each refused by `lowbit perplexity` with
one sentence and exit status 1 (and by `lowbit inspect` too, or shown, where the damage is one
that only running the model can see): never a traceback, never a NaN result with exit 0.

The damage is put where a new user's file would have it: cut short, bits flipped, counts,
sizes, offsets, types and versions that lie, hyperparameters zero or inconsistent with the
tensors, NaN and infinite weights. Each copy is written, tried and deleted in turn (one 94 MiB
file at a time).
"""
from __future__ import annotations

import math

import pytest

from conftest import lowbit, real_model, shared_data
from gguf_damage import field_map, flip_bit, put, set_f16, set_scalar

Q4_1, Q8_0 = 3, 8


def truncate(at):
    return lambda d, m: d[:at(d, m)]


def tensor_field(name, attr, fmt, value):
    return lambda d, m: put(d, getattr(m.tensors[name], attr), fmt, value(m.tensors[name]) if callable(value) else value)


def kv_field(key, attr, fmt, value):
    return lambda d, m: put(d, getattr(m.kvs[key], attr), fmt, value)


def hyper(key, value):
    return lambda d, m: set_scalar(d, m, key, value)


def rename_tensor_like_previous(d, m):
    # blk.0.ffn_gate.weight -> blk.0.ffn_down.weight: same length, a name given twice
    t = m.tensors["blk.0.ffn_gate.weight"]
    d[t.name_len_at + 8:t.name_len_at + 8 + len(t.name)] = b"blk.0.ffn_down.weight"
    return d


def rows_doubled(d, m):
    t = m.tensors["blk.7.ffn_down.weight"]
    return put(d, t.dims_at[1], "<Q", 2 * t.dims[1])


def alignment_3(d, m):
    # the file has no general.alignment: general.file_type, a u32 key of the same length, becomes it
    kv = m.kvs["general.file_type"]
    d[kv.key_len_at + 8:kv.key_len_at + 8 + 17] = b"general.alignment"
    return put(d, kv.value_at, "<I", 3)


DAMAGE = {
    # truncations
    "cut in the header": truncate(lambda d, m: 20),
    "cut in the metadata": truncate(lambda d, m: m.kvs["tokenizer.ggml.tokens"].value_at + 1000),
    "cut in the tensor infos": truncate(lambda d, m: m.tensors["blk.20.attn_q.weight"].name_len_at + 5),
    "cut in the tensor data": truncate(lambda d, m: len(d) // 2),
    "last byte missing": truncate(lambda d, m: len(d) - 1),
    # bit flips
    "magic bit flipped": lambda d, m: flip_bit(d, 0, 1),
    "tensor count high bit flipped": lambda d, m: flip_bit(d, m.n_tensors_at + 5, 3),
    "key length bit flipped": lambda d, m: flip_bit(d, m.kvs["llama.block_count"].key_len_at + 3, 0),
    "tensor type bit flipped": lambda d, m: flip_bit(d, m.tensors["blk.3.ffn_up.weight"].type_at, 6),
    # versions
    "version 1": lambda d, m: put(d, m.version_at, "<I", 1),
    "version 4": lambda d, m: put(d, m.version_at, "<I", 4),
    "big-endian version": lambda d, m: put(d, m.version_at, ">I", 3),
    # counts
    "one tensor more than there is": lambda d, m: put(d, m.n_tensors_at, "<Q", len(m.tensors) + 1),
    "2^40 tensors": lambda d, m: put(d, m.n_tensors_at, "<Q", 1 << 40),
    "five metadata keys more": lambda d, m: put(d, m.n_kv_at, "<Q", len(m.kvs) + 5),
    "vocabulary array count 2^50": kv_field("tokenizer.ggml.tokens", "count_at", "<Q", 1 << 50),
    "vocabulary array one short": kv_field("tokenizer.ggml.tokens", "count_at", "<Q", 49151),
    # types
    "unknown metadata value type": kv_field("llama.context_length", "type_at", "<I", 99),
    "string metadata as u64": kv_field("general.name", "type_at", "<I", 10),
    "unknown array item type": kv_field("tokenizer.ggml.merges", "value_at", "<I", 99),
    "tensor type changed Q4_1 -> Q8_0": tensor_field("blk.5.attn_q.weight", "type_at", "<I", Q8_0),
    "tensor type changed to an unknown id": tensor_field("blk.5.attn_q.weight", "type_at", "<I", 99),
    # sizes and offsets
    "tensor rows doubled": rows_doubled,
    "five dimensions": tensor_field("blk.7.ffn_up.weight", "n_dims_at", "<I", 5),
    "tensor offset one block later": tensor_field("blk.8.attn_k.weight", "offset_at", "<Q", lambda t: t.offset + 32),
    "tensor offset not aligned": tensor_field("blk.8.attn_v.weight", "offset_at", "<Q", lambda t: t.offset + 1),
    "tensor offset past the end": tensor_field("output_norm.weight", "offset_at", "<Q", lambda t: 1 << 40),
    "a tensor name given twice": rename_tensor_like_previous,
    "alignment of 3": alignment_3,
    # hyperparameters
    "head count 0": hyper("llama.attention.head_count", 0),
    "head count 7 (KV heads 3)": hyper("llama.attention.head_count", 7),
    "KV head count 2 of 9": hyper("llama.attention.head_count_kv", 2),
    "KV head count 0": hyper("llama.attention.head_count_kv", 0),
    "embedding length 512 (tensors 576)": hyper("llama.embedding_length", 512),
    "embedding length 0": hyper("llama.embedding_length", 0),
    "block count 0": hyper("llama.block_count", 0),
    "block count 31 (30 blocks)": hyper("llama.block_count", 31),
    "block count 29 (30 blocks)": hyper("llama.block_count", 29),
    "feed-forward length 1000": hyper("llama.feed_forward_length", 1000),
    "vocabulary size 50000": hyper("llama.vocab_size", 50000),
    "RMS epsilon NaN": hyper("llama.attention.layer_norm_rms_epsilon", math.nan),
    "RoPE base negative": hyper("llama.rope.freq_base", -10000.0),
    "RoPE dimensions 65": hyper("llama.rope.dimension_count", 65),
    "context length 0": hyper("llama.context_length", 0),
    "BOS id past the vocabulary": hyper("tokenizer.ggml.bos_token_id", 10 ** 6),
    # non-finite weights
    "NaN scale in a Q4_1 block": lambda d, m: set_f16(d, m.tensor_data_at("blk.10.ffn_down.weight") + 20 * 77, math.nan),
    "infinite scale in the Q8_0 embedding": lambda d, m: set_f16(d, m.tensor_data_at("token_embd.weight") + 34 * 1000, math.inf),
    "NaN in an F32 norm": lambda d, m: put(d, m.tensor_data_at("blk.12.ffn_norm.weight") + 4 * 5, "<f", math.nan),
    "infinity in the output norm": lambda d, m: put(d, m.tensor_data_at("output_norm.weight"), "<f", -math.inf),
}


@pytest.fixture(scope="module")
def source():
    path = real_model("smollm2-135m")
    data = path.read_bytes()
    return data, field_map(data)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    words = shared_data("wiki.test.raw").read_text(encoding="utf-8")[:4000]
    path = tmp_path_factory.mktemp("text") / "short.raw"
    path.write_text(words)
    return path


def test_the_corpus_is_large_enough():
    assert len(DAMAGE) >= 25


@pytest.mark.real
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_file_is_refused_with_a_sentence(damage, source, text, tmp_path):
    data, fields = source
    bad = tmp_path / "damaged.gguf"
    bad.write_bytes(DAMAGE[damage](bytearray(data), fields))
    try:
        shown = lowbit("inspect", bad, timeout=300)
        run = lowbit("perplexity", bad, "-f", text, "-c", "64", "--chunks", "1", "-t", "1", timeout=600)
    finally:
        bad.unlink()
    for done in (shown, run):
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode in (0, 1), done.stderr
        if done.returncode == 1:
            assert len(done.stderr.strip().splitlines()) == 1 and "error: " in done.stderr, done.stderr
    assert run.returncode == 1 and "PPL" not in run.stdout, (run.stdout, run.stderr)
    print(f"{damage}: {run.stderr.strip()}")
