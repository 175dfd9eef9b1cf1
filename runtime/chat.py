"""Multi-turn chat: the model's own chat template (jinja2), a KV cache reused across turns."""
from __future__ import annotations

from datetime import date

from jinja2.sandbox import ImmutableSandboxedEnvironment

from .config import ContextFullError, ModelError
from .generate import GenerationStats, TextStream, generate_tokens
from .model import KVCache, Model
from .sampling import Sampler
from .tokenizer import Tokenizer

# Used when a file carries no tokenizer.chat_template, as llama.cpp falls back to ChatML.
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Gemma's turn format; a system prompt is folded into the first user turn, as Gemma's own does.
GEMMA = ("{{ bos_token }}{% set sys = messages[0].content + '\\n\\n' if messages and messages[0].role == 'system' "
         "else '' %}{% for m in (messages[1:] if sys else messages) %}"
         "<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
         "{{ (sys if loop.first else '') + m.content }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
FALLBACK_TEMPLATES = {"gemma3": GEMMA}


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message):
            raise ModelError(f"the chat template refused the conversation: {message}")

        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: date.today().strftime(fmt)
        self.template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token)

    @classmethod
    def for_model(cls, model: Model, tokenizer: Tokenizer) -> "ChatTemplate":
        source = model.gguf.get("tokenizer.chat_template") or FALLBACK_TEMPLATES.get(model.cfg.arch_name, CHATML)
        tok = lambda i: tokenizer.tokens[i] if i is not None else ""
        return cls(source, tok(tokenizer.bos_id), tok(tokenizer.eos_id))


class ChatSession:
    def __init__(self, model: Model, tokenizer: Tokenizer, n_ctx: int, sampler: Sampler,
                 system_prompt: str | None = None):
        self.model, self.tokenizer, self.sampler = model, tokenizer, sampler
        self.template = ChatTemplate.for_model(model, tokenizer)
        self.cache: KVCache = model.new_cache(n_ctx)
        self.cached_tokens: list[int] = []
        self.messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.stats = GenerationStats()

    def _conversation_tokens(self) -> list[int]:
        text = self.template.render(self.messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(text, add_special=False, parse_special=True)
        if self.tokenizer.add_bos and self.tokenizer.bos_id is not None and ids[:1] != [self.tokenizer.bos_id]:
            ids.insert(0, self.tokenizer.bos_id)
        return ids

    def reply(self, user_text: str, n_predict: int = -1):
        """Yield the assistant's answer as text pieces; the answer joins the history as it goes,
        so an interrupted answer stays part of the conversation."""
        if not user_text.strip():
            raise ModelError("the message is empty")
        self.messages.append({"role": "user", "content": user_text})
        ids = self._conversation_tokens()
        if len(ids) >= self.cache.n_ctx:
            self.messages.pop()
            raise ContextFullError(f"the conversation needs {len(ids)} tokens but the context holds "
                                   f"{self.cache.n_ctx}")
        # Reuse the cache for the common prefix of what it holds and the new conversation.
        common = 0
        for a, b in zip(self.cached_tokens, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # always evaluate at least one token
        self.cache.n_past = common
        self.cached_tokens = list(ids)
        limit = n_predict if n_predict > 0 else self.cache.n_ctx
        answer = {"role": "assistant", "content": ""}
        self.messages.append(answer)
        stream = TextStream(self.tokenizer)
        for token in generate_tokens(self.model, self.tokenizer, ids[common:], self.cache, limit,
                                     self.sampler, self.stats, history=ids):
            self.cached_tokens.append(token)
            piece = stream.push(token)
            answer["content"] += piece
            yield piece
        # The last sampled token (and an end-of-turn token) never went through the model.
        self.cached_tokens = self.cached_tokens[:self.cache.n_past]
        tail = stream.flush()
        answer["content"] += tail
        if tail:
            yield tail

    def clear(self):
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.cached_tokens = []
        self.cache.n_past = 0
