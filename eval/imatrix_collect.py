"""`lowbit imatrix`: run the model over calibration text and accumulate, for every weight matrix
it multiplies, the per-column sum of squared input activations and the rows seen, as
llama-imatrix does (chunks of n_ctx tokens, BOS first in each chunk when the model adds it)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lowbit.quant.imatrix import ImportanceMatrix
from lowbit.runtime.finite import check_logits
from lowbit.runtime.model import Model
from lowbit.runtime.tokenizer import Tokenizer

from .perplexity import chunk_tokens


def collect_imatrix(model: Model, tokenizer: Tokenizer, text: str, dataset: str, n_ctx: int = 512,
                    n_chunks: int | None = None, include_output: bool = False,
                    on_chunk: Callable[[int, int], None] | None = None) -> ImportanceMatrix:
    tokens = tokenizer.encode(text, add_special=True)
    chunks = chunk_tokens(tokens, n_ctx, n_chunks, tokenizer.bos_id if tokenizer.add_bos else None)
    im = ImportanceMatrix(datasets=[Path(dataset).name], chunk_size=n_ctx)
    linears = model.linears(include_output)
    for lin in linears:
        lin.observer = im.add
    try:
        for i, chunk in enumerate(chunks):
            first = 0 if include_output else len(chunk) - 1
            logits = model.forward(chunk, model.new_cache(n_ctx), logits_from=first)
            check_logits(logits, chunk, first, f"in chunk {i + 1}")
            im.chunk_count = i + 1
            if on_chunk:
                on_chunk(i, len(chunks))
    finally:
        for lin in linears:
            lin.observer = None
    return im
