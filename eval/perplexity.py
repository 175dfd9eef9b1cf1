"""Perplexity exactly as llama.cpp's llama-perplexity computes it.

The whole text is tokenized once and cut into consecutive chunks of n_ctx tokens; when the model
adds BOS, the first token of each chunk is overwritten (not shifted) with BOS. Each chunk runs
from an empty cache, and the predictions of tokens n_ctx/2+1 .. n_ctx-1 are scored (the first
half only gives context), so 255 tokens per chunk at n_ctx = 512.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lowbit.quant.errors import LowbitError

from lowbit.runtime.finite import check_logits
from lowbit.runtime.model import Model
from lowbit.runtime.tokenizer import Tokenizer


class PerplexityError(LowbitError):
    """A text too short for the context, or a context too small."""


@dataclass
class PerplexityResult:
    n_ctx: int
    n_chunks: int
    n_scored: int
    ppl: float
    ppl_error: float
    running: list[float] = field(default_factory=list)
    seconds: float = 0.0


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def chunk_tokens(tokens: list[int], n_ctx: int, n_chunks: int | None, bos_id: int | None) -> list[np.ndarray]:
    if n_ctx < 4:
        raise PerplexityError(f"the context must be at least 4 tokens, not {n_ctx}")
    if len(tokens) < 2 * n_ctx:
        raise PerplexityError(f"the text has {len(tokens)} tokens; at least 2 * {n_ctx} = {2 * n_ctx} "
                              f"are needed for a context of {n_ctx}")
    available = len(tokens) // n_ctx
    count = available if n_chunks is None or n_chunks <= 0 else min(n_chunks, available)
    chunks = []
    for i in range(count):
        chunk = np.array(tokens[i * n_ctx:(i + 1) * n_ctx], dtype=np.int64)
        if bos_id is not None:
            chunk[0] = bos_id
        chunks.append(chunk)
    return chunks


def perplexity(model: Model, tokenizer: Tokenizer, text: str, n_ctx: int = 512,
               n_chunks: int | None = None,
               on_chunk: Callable[[int, int, float], None] | None = None,
               on_logits: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None) -> PerplexityResult:
    """PPL of `text`. on_chunk(i, n, running_ppl) reports progress; on_logits(i, chunk,
    log_probs, targets) receives each chunk's tokens and scored log-probabilities (for KL-divergence)."""
    import time
    start = time.perf_counter()
    tokens = tokenizer.encode(text, add_special=True)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    chunks = chunk_tokens(tokens, n_ctx, n_chunks, bos)
    first = n_ctx // 2
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    for i, chunk in enumerate(chunks):
        cache = model.new_cache(n_ctx)
        # logits of positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1
        logits = model.forward(chunk[:n_ctx - 1], cache, logits_from=first)
        check_logits(logits, chunk, first, f"in chunk {i + 1}")
        log_probs = log_softmax_rows(logits)
        targets = chunk[first + 1:]
        nll = -log_probs[np.arange(len(targets)), targets]
        nll_sum += nll.sum()
        nll2_sum += np.square(nll).sum()
        count += len(targets)
        running.append(math.exp(nll_sum / count))
        if on_logits:
            on_logits(i, chunk, log_probs, targets)
        if on_chunk:
            on_chunk(i, len(chunks), running[-1])
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return PerplexityResult(n_ctx, len(chunks), count, ppl, err, running, time.perf_counter() - start)
