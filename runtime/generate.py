"""Token generation: the prompt in one batch, then one token at a time, streamed as text."""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import Iterator

from .config import ContextFullError, ModelError
from .finite import check_logits
from .model import KVCache, Model
from .sampling import Sampler
from .tokenizer import Tokenizer


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    stopped_by: str = ""

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0

    def summary(self) -> str:
        return (f"prompt: {self.prompt_tokens} tokens at {self.prompt_tps:.1f} tokens/s; "
                f"generated: {self.generated_tokens} tokens at {self.generate_tps:.1f} tokens/s")


class TextStream:
    """Turns token ids into text as they come, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def check_prompt(n_past: int, n_new: int, n_ctx: int) -> None:
    """Refuse an empty prompt, or one that does not fit after the n_past tokens of the cache."""
    if not n_new:
        raise ModelError("the prompt is empty")
    if n_past + n_new > n_ctx:
        raise ContextFullError(f"the prompt needs {n_past + n_new} tokens but the context "
                               f"holds {n_ctx}")


def generate_tokens(model: Model, tokenizer: Tokenizer, new_tokens: list[int], cache: KVCache,
                    n_predict: int, sampler: Sampler, stats: GenerationStats,
                    history: list[int] | None = None) -> Iterator[int]:
    """Evaluate `new_tokens` after what `cache` holds, then sample up to n_predict tokens.

    Stops at an end-of-generation token (not yielded) or when the context is full
    (stats.stopped_by says which). `history` (the tokens so far) feeds the repetition penalty.
    """
    check_prompt(cache.n_past, len(new_tokens), cache.n_ctx)
    history = list(history or []) + list(new_tokens)
    t = time.perf_counter()
    logits = model.forward(new_tokens, cache)[-1]
    check_logits(logits[None], new_tokens, len(new_tokens) - 1, "in the prompt")
    stats.prompt_tokens += len(new_tokens)
    stats.prompt_seconds += time.perf_counter() - t
    t = time.perf_counter()
    try:
        for i in range(n_predict):
            token = sampler.sample(logits, history)
            if tokenizer.is_end_of_generation(token):
                stats.stopped_by = "end of generation"
                return
            stats.generated_tokens += 1
            history.append(token)
            yield token
            if i == n_predict - 1:
                break
            if cache.n_past >= cache.n_ctx:
                stats.stopped_by = "context full"
                return
            logits = model.forward([token], cache)[-1]
            check_logits(logits[None], [token])
        stats.stopped_by = "token limit"
    finally:
        stats.generate_seconds += time.perf_counter() - t
