"""The fast runtime against the slow numpy reference, on tiny synthetic models."""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime.config import ContextFullError, ModelError
from lowbit.runtime.generate import GenerationStats, generate_tokens
from lowbit.runtime.model import Model
from lowbit.runtime.sampling import Sampler, SamplerSettings
from lowbit.runtime.tokenizer import Tokenizer

from reference_model import ReferenceModel
from synthetic import build_model

# Tolerance for logits: the runtime accumulates in float32 (fastmath kernels, float32
# attention), the reference in float64. Measured differences are ~1e-6 of the logit range;
# 1e-4 leaves room and still catches any wrong rotation, scale or mask.
LOGIT_TOL = 1e-4

CASES = [("llama", "Q4_K"), ("llama", "IQ2_XXS"), ("llama", "Q8_0"), ("qwen2", "Q6_K"),
         ("qwen3", "IQ4_XS"), ("gemma3", "Q5_K"), ("llama", "F16")]
PROMPT = [5, 80, 99, 120, 7, 260, 33, 40, 41, 200, 12]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    made = {}

    def get(arch, wtype, **kw):
        key = (arch, wtype, repr(sorted(kw.items())))
        if key not in made:
            path = tmp_path_factory.mktemp("models") / f"{arch}-{wtype}.gguf"
            made[key] = build_model(path, arch, wtype, **kw)
        return made[key]
    return get


def assert_logits_close(got, want):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= LOGIT_TOL * scale, np.abs(got - want).max() / scale


@pytest.mark.parametrize("arch, wtype", CASES, ids=[f"{a}-{t}" for a, t in CASES])
def test_batched_logits_match_reference(models, arch, wtype):
    path = models(arch, wtype)
    model = Model.load(path)
    cache = model.new_cache(64)
    got = model.forward(PROMPT, cache, logits_from=0)
    assert_logits_close(got, ReferenceModel(path).logits(PROMPT))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_token_by_token_equals_batch(models, arch):
    model = Model.load(models(arch, "Q4_0"))
    batch = model.forward(PROMPT, model.new_cache(32), logits_from=0)
    cache = model.new_cache(32)
    one = np.concatenate([model.forward([t], cache) for t in PROMPT])
    assert_logits_close(one, batch)
    split = model.new_cache(32)
    model.forward(PROMPT[:4], split)
    assert_logits_close(model.forward(PROMPT[4:], split, logits_from=0), batch[4:])


def test_sliding_window_matters_beyond_the_window(models):
    # gemma3 synthetic models have a window of 6: 11 tokens exercise the mask on layer 0.
    path = models("gemma3", "Q8_0")
    model = Model.load(path)
    got = model.forward(PROMPT, model.new_cache(32), logits_from=0)
    assert_logits_close(got, ReferenceModel(path).logits(PROMPT))


def test_mixed_types_and_untied_output(models):
    path = models("llama", "Q4_K", tied=False, embd_type="Q6_K",
                  type_overrides={"blk.0.ffn_down.weight": "IQ3_S", "blk.1.attn_v.weight": "Q5_0",
                                  "blk.0.attn_q.weight": "BF16"})
    model = Model.load(path)
    got = model.forward(PROMPT, model.new_cache(32), logits_from=0)
    assert_logits_close(got, ReferenceModel(path).logits(PROMPT))


@pytest.mark.parametrize("arch, wtype", [("llama", "Q4_K"), ("qwen3", "IQ3_XXS"), ("gemma3", "Q6_K")])
def test_greedy_generation_equals_reference(models, arch, wtype):
    path = models(arch, wtype)
    model = Model.load(path)
    tok = Tokenizer(model.gguf.metadata)
    tok.end_of_generation = set()  # compare a fixed number of tokens
    prompt = PROMPT[:5]
    got = list(generate_tokens(model, tok, prompt, model.new_cache(64), 12,
                               Sampler(SamplerSettings(temp=0)), GenerationStats()))
    assert got == ReferenceModel(path).greedy(prompt, 12)


def test_context_overflow_and_empty_input(models):
    model = Model.load(models("llama", "Q4_K"))
    cache = model.new_cache(8)
    with pytest.raises(ModelError, match="context is full"):
        model.forward(PROMPT, cache)
    with pytest.raises(ModelError, match="no tokens"):
        model.forward([], cache)
    tok = Tokenizer(model.gguf.metadata)
    with pytest.raises(ModelError, match="prompt is empty"):
        list(generate_tokens(model, tok, [], cache, 4, Sampler(), GenerationStats()))
    with pytest.raises(ContextFullError, match="the prompt needs .* tokens but the context holds 8"):
        list(generate_tokens(model, tok, PROMPT, cache, 4, Sampler(), GenerationStats()))


def test_unsupported_architecture_and_missing_tensor(models, tmp_path):
    import gguf
    from lowbit.quant.gguffile import open_gguf
    from synthetic import write_gguf
    from lowbit.quant.types import by_name

    bad = write_gguf(tmp_path / "falcon.gguf", {"x": (np.zeros(4, np.float32), by_name("F32"))}, arch="falcon")
    with pytest.raises(ModelError, match="architecture 'falcon' is not supported"):
        Model(open_gguf(bad))
    # drop a tensor from a good model by rewriting it without blk.1.ffn_up.weight
    src = gguf.GGUFReader(str(models("llama", "Q4_0")))
    w = gguf.GGUFWriter(str(tmp_path / "holey.gguf"), "llama")
    for f in src.fields.values():
        if f.name.startswith("llama.") and f.types[0] != gguf.GGUFValueType.ARRAY:
            w.add_key_value(f.name, f.parts[f.data[0]][0].item(), f.types[0])
    for t in src.tensors:
        if t.name != "blk.1.ffn_up.weight":
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ModelError, match="has no tensor blk.1.ffn_up.weight"):
        Model.load(tmp_path / "holey.gguf")


def test_sampler_settings():
    logits = np.array([1.0, 5.0, 3.0, -2.0])
    assert Sampler(SamplerSettings(temp=0)).sample(logits) == 1
    # repetition penalty can flip the greedy choice
    assert Sampler(SamplerSettings(temp=0, repeat_penalty=2.0)).sample(logits, [1]) == 2
    s = Sampler(SamplerSettings(temp=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=3))
    assert {s.sample(logits) for _ in range(200)} == {1, 2}
    s = Sampler(SamplerSettings(temp=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=3))
    assert {s.sample(logits) for _ in range(200)} == {1}
    a = [Sampler(SamplerSettings(temp=1.0, seed=9)).sample(logits) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same choice


@pytest.mark.parametrize("arch, wtype", [("llama", "Q4_K"), ("qwen2", "Q2_K")])
def test_fast_precision_is_close_and_exact_is_the_default(models, arch, wtype):
    # "fast": one int8 activation plane per block (llama.cpp's precision); its logits differ
    # from the reference by the activation rounding (~1e-2 of the logit range on these tiny
    # random models), not by a decode mistake (order 1); "exact" stays within LOGIT_TOL.
    path = models(arch, wtype)
    model = Model.load(path)
    assert model.precision == "exact"
    want = ReferenceModel(path).logits(PROMPT)
    model.precision = "fast"
    fast = model.forward(PROMPT, model.new_cache(32), logits_from=0)
    err = np.abs(fast - want).max() / np.abs(want).max()
    assert 1e-5 < err < 0.1, err
    model.precision = "exact"
    assert_logits_close(model.forward(PROMPT, model.new_cache(32), logits_from=0), want)
    with pytest.raises(ValueError, match="precision must be one of"):
        model.precision = "fastest"


@pytest.mark.parametrize("arch,wtype", [("llama", "Q4_K"), ("gemma3", "IQ2_XXS")])
def test_prepare_leaves_no_kernel_to_load(models, monkeypatch, arch, wtype):
    """After Model.prepare, a long prompt and a generated token find every kernel ready: no
    numba dispatcher compiles or reads its disk cache mid-generation."""
    from numba.core.dispatcher import Dispatcher

    model = Model.load(models(arch, wtype))
    model.prepare()
    loaded = []
    original = Dispatcher._compile_for_args

    def record(self, *args, **kws):
        loaded.append(self.py_func.__qualname__)
        return original(self, *args, **kws)

    monkeypatch.setattr(Dispatcher, "_compile_for_args", record)
    cache = model.new_cache(64)
    logits = model.forward(np.arange(40) % 200, cache)
    model.forward([int(np.argmax(logits[-1]))], cache)
    assert loaded == []
