"""bench/make_synthetic.py's models: loadable by lowbit (model, tokenizer), and the fast runtime
on them against the float64 reference (tests/reference_model.py), for each float type."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit.runtime.model import Model
from lowbit.runtime.tokenizer import Tokenizer

from reference_model import ReferenceModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import make_synthetic  # noqa: E402

PROMPT = [1, 5, 80, 99, 120, 7, 260, 33, 40, 41, 200, 12, 301, 2, 17, 3, 350, 9]


def small(arch: str, **kw) -> make_synthetic.Shape:
    base = dict(arch=arch, n_embd=256, n_ff=512, n_layer=2, n_head=4, n_head_kv=2, n_vocab=400, tied=True)
    return make_synthetic.Shape(**{**base, **kw})


@pytest.mark.parametrize("arch, wtype, tied", [("qwen2", "F16", True), ("llama", "BF16", False),
                                               ("llama", "F32", True)])
def test_synthetic_model_logits_match_the_reference(tmp_path, arch, wtype, tied):
    path = make_synthetic.write_model(tmp_path / f"{arch}-{wtype}.gguf", small(arch, tied=tied), wtype, log=None)
    model = Model.load(path)
    assert {lin.matrix.qtype.name for lin in model.linears(include_output=True)} == {wtype}
    got = model.forward(PROMPT, model.new_cache(32), logits_from=0)
    want = ReferenceModel(path).logits(PROMPT)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_synthetic_vocabulary_tokenizes(tmp_path):
    path = make_synthetic.write_model(tmp_path / "m.gguf", small("llama"), "Q8_0", log=None)
    model = Model.load(path)
    tok = Tokenizer(model.gguf.metadata)
    assert tok.vocab_size == 400
    ids = tok.encode("hi there")
    assert ids[0] == 1 and all(0 <= i < 400 for i in ids)   # BOS, then byte pieces


def test_sizes_that_do_not_fit_the_type_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not whole Q4_K blocks"):
        make_synthetic.write_model(tmp_path / "m.gguf", small("llama", n_embd=288), "Q4_K", log=None)
    with pytest.raises(ValueError, match="unknown tensor type"):
        make_synthetic.write_model(tmp_path / "m.gguf", small("llama"), "Q9_X", log=None)
    assert not list(tmp_path.iterdir())
