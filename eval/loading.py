"""Loading a model and its tokenizer by name or path (shared by the commands and the ladder)."""
from __future__ import annotations


def load_model(name_or_path):
    from lowbit.runtime.model import Model
    from lowbit.runtime.tokenizer import Tokenizer

    from .model_store import resolve_model

    model = Model.load(resolve_model(str(name_or_path)))
    return model, Tokenizer(model.gguf.metadata)
