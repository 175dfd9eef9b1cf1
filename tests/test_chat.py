from __future__ import annotations

import pytest

from lowbit.runtime.chat import CHATML, GEMMA, ChatSession, ChatTemplate
from lowbit.runtime.config import ModelError
from lowbit.runtime.model import Model
from lowbit.runtime.sampling import Sampler, SamplerSettings
from lowbit.runtime.tokenizer import Tokenizer

from synthetic import build_model


def test_templates_render_conversations():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    chatml = ChatTemplate(CHATML).render(msgs)
    assert chatml.endswith("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    gemma = ChatTemplate(GEMMA, bos_token="<bos>").render(msgs)
    assert gemma.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")
    assert "<start_of_turn>model\nHello<end_of_turn>\n" in gemma
    assert gemma.endswith("<start_of_turn>model\n")


def test_template_exceptions_become_clear_errors():
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ModelError, match="roles must alternate"):
        t.render([])


@pytest.fixture(scope="module")
def session_parts(tmp_path_factory):
    model = Model.load(build_model(tmp_path_factory.mktemp("chat") / "m.gguf"))
    return model, Tokenizer(model.gguf.metadata)


def test_multi_turn_reuses_the_cache(session_parts):
    model, tok = session_parts
    s = ChatSession(model, tok, 256, Sampler(SamplerSettings(temp=0)), system_prompt="sys")
    first = "".join(s.reply("hello", n_predict=5))
    evaluated_after_first = s.stats.prompt_tokens
    "".join(s.reply("again", n_predict=5))
    convo = s._conversation_tokens()
    # the second turn evaluated only what follows the cached prefix, not the whole conversation
    assert s.stats.prompt_tokens - evaluated_after_first < len(convo) - 5
    assert s.messages[2] == {"role": "assistant", "content": first}
    assert s.cache.n_past == len(s.cached_tokens)


def test_conversation_longer_than_the_context(session_parts):
    model, tok = session_parts
    s = ChatSession(model, tok, 16, Sampler(SamplerSettings(temp=0)))
    with pytest.raises(ModelError, match="context holds 16"):
        list(s.reply("the cat sat on the mat " * 10))
    assert s.messages == []
    with pytest.raises(ModelError, match="empty"):
        list(s.reply("   "))
