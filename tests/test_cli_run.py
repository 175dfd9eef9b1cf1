"""The running commands on bad input: one sentence on stderr, exit status 1, no traceback."""
from __future__ import annotations

import pytest

from conftest import assert_one_sentence, lowbit
from synthetic import build_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("cli") / "m.gguf", "llama", "Q4_0")


def test_generate_streams_and_reports_speed(model_path):
    done = lowbit("generate", model_path, "-p", "the cat", "-n", "8", "--temp", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("the cat")
    # load time on its own line, before the token rates (which count only the tokens)
    load, rates = done.stderr.index("[load: "), done.stderr.index("tokens/s")
    assert load < rates and "fast activations" in done.stderr


@pytest.mark.parametrize("args, fragment", [
    (["generate", "{m}", "-p", ""], "the prompt is empty"),
    (["generate", "{m}", "-p", "the cat sat on the mat " * 20, "-c", "16"], "raise -c or shorten the prompt"),
    (["generate", "missing.gguf", "-p", "hi"], "does not exist"),
    (["perplexity", "{m}", "-f", "no-such-text.txt"], "text file no-such-text.txt does not exist"),
    (["perplexity", "{m}", "-f", "{short}", "-c", "64"], "at least 2 * 64 = 128"),
    (["generate", "{m}", "-p", "x", "-t", "99"], "-t must be between"),
])
def test_bad_input(model_path, tmp_path, args, fragment):
    short = tmp_path / "short.txt"
    short.write_text("only a few words here")
    args = [a.format(m=model_path, short=short) for a in args]
    assert_one_sentence(lowbit(*args), fragment)


def test_wrong_architecture(tmp_path):
    import numpy as np
    from lowbit.quant.types import by_name
    from synthetic import write_gguf
    bad = write_gguf(tmp_path / "b.gguf", {"x": (np.zeros(4, np.float32), by_name("F32"))}, arch="mamba")
    assert_one_sentence(lowbit("generate", bad, "-p", "hi"), "architecture 'mamba' is not supported")


def test_chat_multi_turn_and_exit(model_path):
    done = lowbit("chat", model_path, "--temp", "0", "-n", "6", stdin="hello there\nand again\n/exit\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("tokens/s") == 2 and done.stderr.count("[load: ") == 1


def test_perplexity_json(model_path, tmp_path):
    import json
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat and then the dog ate the cat. " * 20)
    done = lowbit("perplexity", model_path, "-f", text, "-c", "32", "--chunks", "2", "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["chunks"] == 2 and rep["scored_tokens"] == 2 * 15 and rep["ppl"] > 1
