from __future__ import annotations

import json

import numpy as np
import pytest

from lowbit.eval.cli import main
from lowbit.quant.types import by_name

from conftest import assert_one_sentence, lowbit, real_model
from synthetic import encode_rows, write_gguf


@pytest.fixture
def model_file(tmp_path, rng):
    q = by_name("Q4_0")
    tensors = {"token_embd.weight": (encode_rows(rng.standard_normal((8, 64)), q), q),
               "output_norm.weight": (np.ones(64, np.float32), by_name("F32"))}
    return write_gguf(tmp_path / "m.gguf", tensors, {"llama.block_count": 0})


def test_inspect_prints_the_type_table(model_file, capsys):
    assert main(["inspect", str(model_file), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "architecture:  llama" in out
    assert "| Q4_0     |       1 |          512 |          288 |  4.500 |" in out
    assert "token_embd.weight" in out and "8 x 64" in out


def test_inspect_json(model_file, capsys):
    assert main(["inspect", str(model_file), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["parameters"] == 8 * 64 + 64 and rep["tensors"] == 2


def test_truncated_file_gets_one_sentence_and_exit_1(model_file, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model_file.read_bytes()[:-50])
    done = lowbit("inspect", cut)
    assert_one_sentence(done, "is truncated")
    assert done.stdout == ""


@pytest.mark.parametrize("arg, message", [("nothere.gguf", "does not exist"),
                                          ("no-such-model", "neither a file nor a known model")])
def test_missing_inputs(arg, message, capsys):
    assert main(["inspect", arg]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.parametrize("model, arch, types", [("smollm2-135m", "llama", ["Q4_1", "Q8_0", "F32"]),
                                                ("gemma3-270m", "gemma3", ["Q4_K", "Q6_K", "Q5_0", "Q8_0"])])
def test_inspect_real_models(model, arch, types, capsys, tmp_path):
    path = real_model(model)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"architecture:  {arch}" in out
    for t in types:
        assert f"| {t:<8} |" in out
    cut = tmp_path / "cut.gguf"
    with open(path, "rb") as f:
        cut.write_bytes(f.read(path.stat().st_size // 2))
    assert main(["inspect", str(cut)]) == 1
    assert "is truncated" in capsys.readouterr().err
