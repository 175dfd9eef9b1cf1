"""Activation-aware scales (quant/awq.py): folding them changes nothing the unquantized model
computes; searching them never picks worse than plain on the rows it measures; the layer pass
writes the folded norms and biases into a file that runs."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic import build_model

from lowbit.quant import awq
from lowbit.quant.types import by_name


def _f32_matrix(rows: np.ndarray, name: str):
    from lowbit.runtime.kernels import QuantMatrix
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return QuantMatrix(rows.view(np.uint8).reshape(rows.shape[0], -1), by_name("F32"), rows.shape[0],
                       rows.shape[1], name)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_folded_scales_leave_the_logits_unchanged(tmp_path, arch):
    """Every group of every layer folded with uneven scales (GQA: 4 query heads on 2 KV heads;
    qwen2: v's bias divided too; gemma3: q/k norms and post-norms in the way): the float
    model's logits equal the unfolded ones to float32 precision."""
    from lowbit.quant.decode import dequantize
    from lowbit.runtime.model import Model

    path = build_model(tmp_path / "m.gguf", arch, "F32", embd_type="F32", n_head=4, n_head_kv=2)
    model = Model.load(path)
    tokens = np.arange(3, 40)
    before = model.forward(tokens, model.new_cache(64), logits_from=0)
    cfg = model.cfg
    rng = np.random.default_rng(1)
    for il, layer in enumerate(model.layers):
        tensors = {a: dequantize(getattr(layer, a).matrix.rows, by_name("F32"),
                                 (getattr(layer, a).matrix.n_rows, getattr(layer, a).matrix.n_cols))
                   for a in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
        tensors.update(attn_norm=layer.attn_norm, ffn_norm=layer.ffn_norm, wv_bias=layer.wv.bias)
        for g in awq.SCALE_GROUPS:
            n_in = tensors[g.scaled[0]].shape[1]
            cols, rows = awq.group_scales(g, np.exp(rng.standard_normal(n_in)), 0.8, cfg.n_head, cfg.n_head_kv,
                                          cfg.head_dim)
            assert cols.std() > 0.3                     # the scales are far from 1
            awq.fold(g, tensors, cols, rows)
        for a in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            getattr(layer, a).matrix = _f32_matrix(tensors[a], getattr(layer, a).name)
        layer.attn_norm, layer.ffn_norm, layer.wv.bias = tensors["attn_norm"], tensors["ffn_norm"], tensors["wv_bias"]
        layer.__post_init__()
    if arch == "qwen2":
        assert model.layers[0].wv.bias is not None
    after = model.forward(tokens, model.new_cache(64), logits_from=0)
    assert np.allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_kv_scales_are_shared_by_the_query_heads_of_a_group():
    m = np.arange(1, 4 * 8 + 1, dtype=float)               # 4 query heads of 8, 2 KV heads
    g = awq.SCALE_GROUPS[1]
    cols, rows = awq.group_scales(g, m, 1.0, 4, 2, 8)
    assert rows.shape == (16,) and cols.shape == (32,)
    assert np.array_equal(cols[:8], cols[8:16]) and np.array_equal(cols[16:24], cols[24:])
    assert np.array_equal(cols[:8], rows[:8]) and np.array_equal(cols[16:24], rows[8:])


def test_search_never_picks_worse_than_plain_on_its_rows():
    """alpha = 0 is plain encoding, so the chosen error is at most plain's; on inputs with a few
    loud channels (AWQ's setting) a positive alpha wins for a 4-bit type."""
    rng = np.random.default_rng(0)
    n_in = 256
    loud = np.ones(n_in)
    loud[rng.choice(n_in, 8, replace=False)] = 20.0
    x = rng.standard_normal((2048, n_in)) * loud
    h = x.T @ x
    w = (rng.standard_normal((64, n_in)) / 16).astype(np.float32)
    mean_abs = np.abs(x).mean(axis=0)
    for name in ("Q4_K", "Q4_0", "IQ2_XXS"):
        qtype = by_name(name)
        imp = (np.diagonal(h) / len(x)).astype(np.float32)
        alpha, errors = awq.search_alpha([("blk.0.ffn_up.weight", w, qtype, imp)], h,
                                         lambda a: awq.scales(mean_abs, a))
        assert errors[alpha] <= errors[0.0]
        if name == "Q4_0":
            assert alpha > 0 and errors[alpha] < 0.9 * errors[0.0]


def test_layer_pass_with_scales_writes_a_model_that_runs(tmp_path):
    """--awq through the layer pass on a qwen2-shaped model (GQA, v bias): scale reports for
    every group, folded norms and biases handed to quantize_model, and the file runs."""
    from lowbit.eval.layer_pass import layer_pass
    from lowbit.eval.loading import load_model
    from lowbit.eval.perplexity import perplexity
    from lowbit.quant.gguffile import open_gguf
    from lowbit.quant.quantize_model import make_plan, quantize_model
    from lowbit.quant.recipes import PlanOptions

    src_path = build_model(tmp_path / "m.gguf", "qwen2", "F16", embd_type="F16")
    src = open_gguf(src_path)
    choices = make_plan(src, PlanOptions("Q4_K_M"))
    text = "the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 40
    model, tok = load_model(src_path)
    work = tmp_path / "work"
    work.mkdir()
    files, reports, scale_reports = layer_pass(model, tok, src, {c.name: c.qtype for c in choices}, text, 32, 4,
                                               2, work, gptq=False, awq_scales=True)
    assert len(scale_reports) == 4 * model.cfg.n_layer
    assert all(r.alpha == 0 or r.held_out_ratio < 1 for r in scale_reports)
    scaled = [r for r in scale_reports if r.alpha > 0]
    folded = [n for n in files if not n.endswith("weight") or "norm" in n]
    assert scaled and folded          # this model and text: attn_output and ffn_down scaled in layer 0
    summary = quantize_model(src, tmp_path / "out.gguf", PlanOptions("Q4_K_M"), encoded=files)
    out = open_gguf(summary.paths[0])
    for name in folded:
        saved = np.load(files[name]).view(np.float32).reshape(-1)
        assert np.array_equal(np.asarray(out.raw(name)).view(np.float32).reshape(-1), saved)
    m, t = load_model(summary.paths[0])
    assert np.isfinite(perplexity(m, t, text, 32, 2).ppl)


def test_quantize_command_runs_both_methods(tmp_path):
    """`lowbit quantize ... --gptq --awq --calib TEXT`: a file that loads, a line per scale group
    and per matrix, and nothing left of the pass's work files."""
    from conftest import assert_one_sentence, lowbit

    from lowbit.eval.loading import load_model

    src = build_model(tmp_path / "m.gguf", "qwen2", "F16", embd_type="F16")
    text = tmp_path / "calib.txt"
    text.write_text("the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 200)
    out = tmp_path / "out" / "q.gguf"
    out.parent.mkdir()
    done = lowbit("quantize", src, out, "Q4_K_M", "--gptq", "--awq", "--calib", text, "--calib-chunks", "2",
                  "--held-out-chunks", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("attn_q,attn_k,attn_v") == 2 and "blk.1.ffn_down.weight: Q" in done.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.gguf"]
    model, tok = load_model(out)
    assert np.isfinite(model.forward(tok.encode("the cat"), model.new_cache(8))).all()
    assert_one_sentence(lowbit("quantize", src, tmp_path / "x.gguf", "Q4_K_M", "--gptq"), "need --calib")
    assert_one_sentence(lowbit("quantize", src, tmp_path / "x.gguf", "Q4_K_M", "--awq", "--calib", text,
                               "--calib-chunks", "50"), "needs 50 to fit and 4 held out")
    assert_one_sentence(lowbit("quantize", src, tmp_path / "x.gguf", "Q4_K_M", "--gptq", "--calib", text,
                               "--held-out-chunks", "0"), "at least one calibration chunk to fit and one held out")
    assert not (tmp_path / "x.gguf").exists()
