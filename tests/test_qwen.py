"""Qwen2.5-Coder-1.5B-Instruct, the real-size model (256-aligned rows, K-quants everywhere):
llama.cpp's token ids, the fast model against the float64 reference, and its chat template."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from lowbit.quant.gguffile import open_gguf
from lowbit.runtime.chat import ChatSession
from lowbit.runtime.model import Model
from lowbit.runtime.sampling import Sampler, SamplerSettings
from lowbit.runtime.tokenizer import Tokenizer

from conftest import real_model, shared_data
from reference_model import ReferenceModel

NAME = "qwen2.5-coder-1.5b"

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def qwen():
    path = real_model(NAME)
    model = Model.load(path)
    return path, model, Tokenizer(model.gguf.metadata)


def test_ids_equal_llama_cpp_on_all_of_wiki_test(qwen):
    _, _, tok = qwen
    text = shared_data("wiki.test.raw").read_text(encoding="utf-8")
    want = json.loads(gzip.open(shared_data(f"wiki.test.{NAME}.ids.gz")).read())
    got = tok.encode(text)
    assert len(got) == len(want) == 299078
    assert got == want
    assert tok.decode(got) == text


def test_forward_pass_equals_the_reference(qwen):
    # The float64 reference dequantizes every weight with gguf-py: the slowest part of the suite
    # on this model (about a minute), so one short prompt.
    path, model, tok = qwen
    tokens = tok.encode("The capital of France is")
    want = ReferenceModel(path).logits(tokens)
    got = model.forward(tokens, model.new_cache(16), logits_from=0)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max() / scale
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_chat_with_its_template(qwen):
    _, model, tok = qwen
    session = ChatSession(model, tok, 256, Sampler(SamplerSettings(temp=0)))
    rendered = session.template.render([{"role": "user", "content": "hi"}])
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
    answer = "".join(session.reply("What is the capital of France? Answer in one word.", n_predict=8))
    assert "Paris" in answer
    second = "".join(session.reply("And of Italy?", n_predict=8))
    assert "Rome" in second
