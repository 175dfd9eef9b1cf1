from __future__ import annotations

import struct

import numpy as np
import pytest

from lowbit.quant.gguffile import GGUFError, open_gguf
from lowbit.quant.types import by_name

from synthetic import encode_rows, write_gguf


@pytest.fixture
def small_file(tmp_path, rng):
    q4k, f32 = by_name("Q4_K"), by_name("F32")
    w = rng.standard_normal((4, 256)).astype(np.float32)
    tensors = {"blk.0.ffn_down.weight": (encode_rows(w, q4k), q4k),
               "output_norm.weight": (np.arange(256, dtype=np.float32), f32)}
    meta = {"llama.block_count": 1, "llama.rope.freq_base": 10000.0,
            "tokenizer.ggml.tokens": ["a", "b", "c"], "general.name": "tiny"}
    return write_gguf(tmp_path / "tiny.gguf", tensors, meta), w


def test_reads_metadata_and_tensors(small_file):
    path, _ = small_file
    g = open_gguf(path)
    assert g.version == 3 and g.architecture == "llama"
    assert g.arch_key("block_count") == 1
    assert g.get("tokenizer.ggml.tokens") == ["a", "b", "c"]
    assert g.get("general.name") == "tiny"
    t = g.tensors["blk.0.ffn_down.weight"]
    assert t.shape == (4, 256) and t.qtype.name == "Q4_K" and t.n_bytes == 4 * 144
    norm = g.raw("output_norm.weight").view(np.float32)
    np.testing.assert_array_equal(norm, np.arange(256, dtype=np.float32))


def test_tensor_views_are_zero_copy(small_file):
    g = open_gguf(small_file[0])
    view = g.raw("output_norm.weight")
    assert not view.flags.owndata and not view.flags.writeable


@pytest.mark.parametrize("cut", [3, 30, 200, -1])
def test_truncated_file_is_refused(small_file, tmp_path, cut):
    data = small_file[0].read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut] if cut > 0 else data[:-100])
    with pytest.raises(GGUFError, match="truncated|not a GGUF"):
        open_gguf(bad)


def test_not_gguf_and_missing_files(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GGUFError, match="does not start with 'GGUF'"):
        open_gguf(junk)
    with pytest.raises(GGUFError, match="does not exist"):
        open_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="is a directory"):
        open_gguf(tmp_path)


def test_corrupt_counts_and_types_are_refused(small_file, tmp_path):
    data = bytearray(small_file[0].read_bytes())
    huge = bytearray(data)
    huge[8:16] = struct.pack("<Q", 2**60)  # tensor count
    p = tmp_path / "huge.gguf"
    p.write_bytes(bytes(huge))
    with pytest.raises(GGUFError, match="claims"):
        open_gguf(p)
    version = bytearray(data)
    version[4:8] = struct.pack("<I", 7)
    p.write_bytes(bytes(version))
    with pytest.raises(GGUFError, match="version 7"):
        open_gguf(p)


def test_unsupported_tensor_type_is_named(tmp_path, rng):
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "q4_2.gguf"), "llama")
    w.add_tensor("x", np.zeros((1, 18), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    data = bytearray((tmp_path / "q4_2.gguf").read_bytes())
    at = data.index(b"x") + 1 + 4 + 16  # name | n_dims | 2 dims -> type
    data[at:at + 4] = struct.pack("<I", 39 + 1000)
    (tmp_path / "q4_2.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="tensor x: tensor type id 1039 is not supported"):
        open_gguf(tmp_path / "q4_2.gguf")
