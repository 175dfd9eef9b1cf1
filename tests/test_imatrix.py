from __future__ import annotations

import numpy as np
import pytest

from lowbit.eval.imatrix_collect import collect_imatrix
from lowbit.quant import imatrix as imx
from lowbit.runtime.model import Model
from lowbit.runtime.ops import rms_norm
from lowbit.runtime.tokenizer import Tokenizer

from conftest import shared_data
from synthetic import build_model

TEXT = "the cat sat on the mat and then the dog ate the cat. " * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = Model.load(build_model(tmp_path_factory.mktemp("im") / "m.gguf", "llama", "Q8_0"))
    return model, Tokenizer(model.gguf.metadata)


def test_collects_sum_of_squares_of_every_matrix_input(tiny):
    model, tok = tiny
    im = collect_imatrix(model, tok, TEXT, "t.txt", n_ctx=32, n_chunks=2)
    assert im.chunk_count == 2 and im.chunk_size == 32 and im.datasets == ["t.txt"]
    assert len(im) == 7 * model.cfg.n_layer
    assert all(c == 64 for c in im.counts.values())
    # attn_q of layer 0 sees the normed embeddings: check against a direct computation
    chunks = np.array(tok.encode(TEXT)[:64]).reshape(2, 32)
    x = np.concatenate([rms_norm(model.embed(c), model.layers[0].attn_norm, model.cfg.rms_eps) for c in chunks])
    np.testing.assert_allclose(im.sums["blk.0.attn_q.weight"], np.square(x.astype(np.float64)).sum(0), rtol=1e-5)
    assert im.importance("blk.0.attn_k.weight") == pytest.approx(im.importance("blk.0.attn_q.weight"))


@pytest.mark.parametrize("legacy", [False, True])
def test_files_round_trip(tiny, tmp_path, legacy):
    model, tok = tiny
    im = collect_imatrix(model, tok, TEXT, "t.txt", n_ctx=32, n_chunks=2)
    path = tmp_path / ("m.dat" if legacy else "m.imatrix")
    imx.save(im, path, legacy=legacy)
    back = imx.load(path)
    assert set(back.sums) == set(im.sums) and back.chunk_count == 2
    for name in im.sums:
        np.testing.assert_allclose(back.importance(name), im.importance(name), rtol=1e-6)


@pytest.mark.real
def test_llama_imatrix_legacy_file_loads():
    im = imx.load(shared_data("smollm2-135m.wiki.valid.imatrix"))
    assert len(im) == 210 and im.chunk_count == 40 and im.datasets == ["wiki.valid.raw"]
    assert im.importance("blk.0.ffn_down.weight").shape == (1536,)


def test_bad_files_and_values(tmp_path):
    with pytest.raises(imx.ImatrixError, match="does not exist"):
        imx.load(tmp_path / "none.imatrix")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\xff\xff\xff\x7f" + bytes(10))
    with pytest.raises(imx.ImatrixError, match="not an importance matrix"):
        imx.load(junk)
    im = imx.ImportanceMatrix()
    with pytest.raises(imx.ImatrixError, match="entering blk.0.ffn_up.weight hold NaN"):
        im.add("blk.0.ffn_up.weight", np.array([[1.0, np.nan]], np.float32))
    im.sums["x"] = np.array([1.0, np.inf])
    im.counts["x"] = 1
    with pytest.raises(imx.ImatrixError, match="entry x holds NaN or infinite"):
        imx.save(im, tmp_path / "bad.imatrix")
    assert not (tmp_path / "bad.imatrix").exists()
