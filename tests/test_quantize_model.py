from __future__ import annotations

import gguf
import numpy as np
import pytest

from lowbit.quant.gguffile import open_gguf
from lowbit.quant import imatrix as imx
from lowbit.quant.recipes import ModelShape, PlanOptions, RecipeError, plan, use_more_bits
from lowbit.quant.writer import TensorSpec, write_gguf
from lowbit.runtime.model import Model

from conftest import lowbit
from synthetic import build_model


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("q") / "f32.gguf", "llama", "F32", embd_type="F32", n_layer=8)


def test_writer_copies_a_file_byte_for_byte(f32_model, tmp_path):
    g = open_gguf(f32_model)
    specs = [TensorSpec(n, t.shape, t.qtype, lambda n=n: g.raw(n)) for n, t in g.tensors.items()]
    write_gguf(tmp_path / "copy.gguf", g.metadata, g.metadata_types, specs)
    assert (tmp_path / "copy.gguf").read_bytes() == f32_model.read_bytes()


SHAPES = [(f"blk.{i}.{k}.weight", (256, 256)) for i in range(8)
          for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
SHAPES += [("token_embd.weight", (300, 256)), ("output_norm.weight", (256,))]


def types_of(target, **kw):
    shape = kw.pop("shape", ModelShape(8, 2, has_output=False))
    return {c.name: c.qtype.name for c in plan(SHAPES, shape, PlanOptions(target, **kw))}


def test_preset_rules():
    t = types_of("Q4_K_M")
    assert t["output_norm.weight"] == "F32"
    assert t["token_embd.weight"] == "Q6_K"          # tied output: the output rule
    more = [i for i in range(8) if use_more_bits(i, 8)]
    assert [i for i in range(8) if t[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more
    assert [i for i in range(8) if t[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == more
    assert t["blk.3.attn_q.weight"] == "Q4_K"
    t = types_of("Q2_K")
    assert t["blk.0.attn_v.weight"] == "Q3_K" and t["blk.5.ffn_down.weight"] == "Q3_K"
    assert t["blk.5.attn_output.weight"] == "Q3_K" and t["blk.5.ffn_up.weight"] == "Q2_K"
    # Files may list blocks out of numeric order (SmolLM2: blk.0, blk.1, blk.10, ...): the rules
    # go by the block number in the name, as llama.cpp's do.
    shuffled = sorted(SHAPES, key=lambda s: s[0])
    by_name = {c.name: c.qtype.name for c in plan(shuffled, ModelShape(8, 2, False), PlanOptions("Q4_K_M"))}
    assert by_name == types_of("Q4_K_M")
    t = types_of("IQ2_M", shape=ModelShape(8, 4, has_output=False))
    assert t["blk.0.attn_v.weight"] == "Q4_K" and t["blk.0.ffn_down.weight"] == "IQ3_S"
    assert t["blk.1.ffn_down.weight"] == "IQ2_S" and t["token_embd.weight"] == "Q5_K"


def test_pure_overrides_and_fallbacks():
    t = types_of("Q4_K_M", pure=True)
    assert {t[n] for n, _ in SHAPES if n.startswith("blk.")} == {"Q4_K"}
    t = types_of("Q4_K_M", overrides=[(r"ffn_down", "Q8_0"), (r"blk\.1\.", "Q2_K")])
    assert t["blk.1.ffn_down.weight"] == "Q8_0"   # the first matching pattern wins
    assert t["blk.1.ffn_up.weight"] == "Q2_K"
    t = types_of("Q3_K_M", output_type="Q8_0")
    assert t["token_embd.weight"] == "Q8_0"
    odd = [("blk.0.ffn_down.weight", (64, 576))]
    c = plan(odd, ModelShape(1, 1, True), PlanOptions("Q4_K"))[0]
    assert c.qtype.name == "Q5_0" and "fallback" in c.reason
    # llama.cpp's fallbacks for rows that 256-blocks do not divide
    fallbacks = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "IQ2_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
                 "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
    for want, got in fallbacks.items():
        assert plan(odd, ModelShape(1, 1, True), PlanOptions(want))[0].qtype.name == got
    with pytest.raises(RecipeError, match="cannot take"):
        plan(odd, ModelShape(1, 1, True), PlanOptions("Q4_0", overrides=[("ffn", "IQ2_XS")]))
    with pytest.raises(RecipeError, match="not a valid regex"):
        plan(odd, ModelShape(1, 1, True), PlanOptions("Q4_0", overrides=[("(", "Q8_0")]))
    with pytest.raises(RecipeError, match="unknown type or preset"):
        plan(odd, ModelShape(1, 1, True), PlanOptions("Q3"))


def test_quantize_writes_a_file_lowbit_and_gguf_py_read(f32_model, tmp_path):
    out = tmp_path / "q8.gguf"
    done = lowbit("quantize", f32_model, out, "Q8_0")
    assert done.returncode == 0, done.stderr
    assert "bits per weight" in done.stdout
    g = open_gguf(out)
    assert g.get("general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert {t.qtype.name for t in g.tensors.values()} == {"Q8_0", "F32"}
    reader = gguf.GGUFReader(str(out))
    assert len(reader.tensors) == len(g.tensors)
    src, q = Model.load(f32_model), Model.load(out)
    a = src.forward([5, 6, 7, 8], src.new_cache(8))
    b = q.forward([5, 6, 7, 8], q.new_cache(8))
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_imatrix_keys_and_refusals(f32_model, tmp_path):
    im_path = tmp_path / "m.imatrix"
    done = lowbit("imatrix", f32_model, "-f", __file__, "-o", im_path, "-c", "64", "--chunks", "2")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "q.gguf"
    assert lowbit("quantize", f32_model, out, "Q8_0", "--imatrix", im_path).returncode == 0
    g = open_gguf(out)
    assert g.get("quantize.imatrix.chunks_count") == 2
    assert g.get("quantize.imatrix.entries_count") == 7 * 8
    # an importance matrix of another model
    other = imx.load(im_path)
    other.sums = {k: np.ones(17) for k in other.sums}
    imx.save(other, tmp_path / "other.imatrix")
    nan = imx.load(im_path)
    nan.sums = {k: np.full_like(v, np.nan) for k, v in nan.sums.items()}
    bad = tmp_path / "nan.dat"
    imx._save_legacy(nan, bad)  # save() itself refuses NaN: write the file as another tool might
    cases = [
        (["Q9_9"], "unknown type or preset"),
        (["Q8_0", "--imatrix", tmp_path / "other.imatrix"], "for another model"),
        (["Q8_0", "--imatrix", bad], "NaN"),
        (["Q8_0", "--tensor-type", "ffn_down=Q4_K", "--token-embedding-type", "Q8_0",
          "--output-tensor-type", "Q8_0"], None),
    ]
    for args, message in cases:
        target = tmp_path / "refused.gguf"
        done = lowbit("quantize", f32_model, target, *args)
        if message is None:
            assert done.returncode == 0, done.stderr
            target.unlink()
            continue
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not target.exists() and not list(tmp_path.glob("*.partial"))
    done = lowbit("quantize", f32_model, tmp_path / "missing" / "x.gguf", "Q8_0")
    assert done.returncode == 1 and "does not exist" in done.stderr
    done = lowbit("quantize", f32_model, tmp_path / "plan.gguf", "Q4_K_M", "--dry-run")
    assert done.returncode == 0 and "blk.0.attn_v.weight" in done.stdout
    assert not (tmp_path / "plan.gguf").exists()


def test_forced_types_that_cannot_be_made_are_refused(tmp_path):
    # rows of 96 weights: whole 32-blocks, no 256-blocks
    narrow = build_model(tmp_path / "narrow.gguf", "llama", "F32", embd_type="F32", n_layer=1,
                         n_embd=96, n_ff=160, n_head=2, n_head_kv=1)
    out = tmp_path / "q.gguf"
    done = lowbit("quantize", narrow, out, "Q8_0", "--tensor-type", "attn_q=IQ2_XS")
    assert done.returncode == 1 and "cannot take" in done.stderr and "Traceback" not in done.stderr
    done = lowbit("quantize", narrow, out, "IQ2_XXS")  # as llama-quantize: the preset itself needs one
    assert done.returncode == 1 and "IQ2_XXS needs an importance matrix" in done.stderr
    done = lowbit("quantize", narrow, out, "IQ3_XXS")  # llama.cpp makes IQ3_XXS without one
    assert done.returncode == 0, done.stderr
    out.unlink()
    wide = build_model(tmp_path / "wide.gguf", "llama", "F32", embd_type="F32", n_layer=1)
    done = lowbit("quantize", wide, out, "IQ2_XXS")
    assert done.returncode == 1 and "needs an importance matrix" in done.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_general_file_type_of_plain_types_and_recipes():
    from lowbit.quant.quantize_model import file_type
    from lowbit.quant.recipes import PRESETS, resolve_target
    from lowbit.quant.types import by_name
    # llama-quantize takes Q4_K as Q4_K_M: the file says so, not F16
    assert resolve_target("Q4_K")[0].file_type == PRESETS["Q4_K_M"].file_type
    assert resolve_target("IQ4_NL")[0].file_type == PRESETS["IQ4_NL"].file_type

    def spec(n_rows, qtype):
        return TensorSpec(f"t{n_rows}", (n_rows, 256), by_name(qtype), lambda: None)

    # a recipe: the type holding the most bytes (F32 norms aside) names the file
    specs = [spec(64, "Q3_K"), spec(16, "Q8_0"), spec(256, "F32")]
    assert file_type(PlanOptions(None, recipe={}), specs) == PRESETS["Q3_K_M"].file_type
    assert file_type(PlanOptions("Q2_K"), specs) == PRESETS["Q2_K"].file_type
