from __future__ import annotations

import math

import numpy as np
import pytest

from lowbit.eval.perplexity import PerplexityError, chunk_tokens, perplexity
from lowbit.runtime.model import Model
from lowbit.runtime.tokenizer import Tokenizer

from conftest import real_model, shared_data
from reference_model import ReferenceModel
from synthetic import build_model


def test_chunks_overwrite_the_first_token_with_bos():
    tokens = list(range(100, 150))
    chunks = chunk_tokens(tokens, 16, None, bos_id=1)
    assert len(chunks) == 3
    assert [c[0] for c in chunks] == [1, 1, 1]
    assert list(chunks[1][1:]) == tokens[17:32]
    assert len(chunk_tokens(tokens, 16, 2, None)) == 2
    assert chunk_tokens(tokens, 16, None, None)[1][0] == 116
    with pytest.raises(PerplexityError, match="at least 2 \\* 32 = 64"):
        chunk_tokens(tokens, 32, None, None)


@pytest.mark.parametrize("add_bos", [False, True])
def test_perplexity_equals_reference_nll(tmp_path, add_bos):
    path = build_model(tmp_path / "m.gguf", "llama", "Q4_K", add_bos=add_bos)
    model = Model.load(path)
    tok = Tokenizer(model.gguf.metadata)
    text = "the cat sat on the mat and then the dog ate the cat. " * 8
    n_ctx = 16
    res = perplexity(model, tok, text, n_ctx=n_ctx, n_chunks=3)
    ref = ReferenceModel(path)
    chunks = chunk_tokens(tok.encode(text), n_ctx, 3, tok.bos_id if add_bos else None)
    nll = []
    for c in chunks:
        lg = ref.logits(list(c))
        for j in range(n_ctx // 2, n_ctx - 1):
            row = lg[j] - lg[j].max()
            nll.append(math.log(np.exp(row).sum()) - row[c[j + 1]])
    assert res.n_scored == 3 * (n_ctx - 1 - n_ctx // 2) == len(nll)
    assert res.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)
    assert res.ppl_error > 0 and len(res.running) == 3


@pytest.mark.real
@pytest.mark.parametrize("chunks, reference", [(4, 22.745), (10, 26.617)])
def test_smollm2_perplexity_matches_the_exact_weights_reference(chunks, reference):
    model = Model.load(real_model("smollm2-135m"))
    tok = Tokenizer(model.gguf.metadata)
    text = shared_data("wiki.test.raw").read_text(encoding="utf-8")
    res = perplexity(model, tok, text, n_ctx=512, n_chunks=chunks)
    assert res.n_scored == 255 * chunks
    assert res.ppl == pytest.approx(reference, rel=0.002)


@pytest.mark.real
def test_gemma3_perplexity_matches_the_exact_weights_reference():
    model = Model.load(real_model("gemma3-270m"))
    tok = Tokenizer(model.gguf.metadata)
    text = shared_data("wiki.test.raw").read_text(encoding="utf-8")
    res = perplexity(model, tok, text, n_ctx=512, n_chunks=2)
    assert res.ppl == pytest.approx(15.565, rel=0.002)
