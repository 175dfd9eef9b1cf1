"""Model hyperparameters from GGUF metadata, and what each supported architecture does."""
from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.quant.gguffile import GGUFFile


class ModelError(ValueError):
    """A model file lowbit cannot run; the message names what is missing or unsupported."""


@dataclass(frozen=True)
class Architecture:
    rope_neox: bool              # rotate (i, i + d/2) pairs; else adjacent (2i, 2i+1) pairs
    activation: str = "silu"     # gate activation of the gated feed-forward
    embed_scale: bool = False    # multiply embeddings by sqrt(n_embd)
    post_norms: bool = False     # RMSNorm on the attention and feed-forward outputs too
    swa_period: int = 0          # every swa_period-th layer is global, the others sliding-window


ARCHITECTURES = {
    "llama": Architecture(rope_neox=False),
    "qwen2": Architecture(rope_neox=True),
    "qwen3": Architecture(rope_neox=True),
    "gemma3": Architecture(rope_neox=True, activation="gelu", embed_scale=True, post_norms=True,
                           swa_period=6),
}


@dataclass(frozen=True)
class ModelConfig:
    arch_name: str
    arch: Architecture
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_base_local: float
    rope_dims: int
    rope_freq_scale: float
    sliding_window: int
    attn_scale: float

    def is_sliding(self, layer: int) -> bool:
        p = self.arch.swa_period
        return bool(p) and self.sliding_window > 0 and (layer + 1) % p != 0

    def layer_rope_base(self, layer: int) -> float:
        return self.rope_base_local if self.is_sliding(layer) else self.rope_base


def read_config(gguf: GGUFFile) -> ModelConfig:
    name = gguf.architecture
    if name not in ARCHITECTURES:
        raise ModelError(f"architecture {name!r} is not supported; lowbit runs "
                         f"{', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]

    def need(key):
        value = gguf.arch_key(key)
        if value is None:
            raise ModelError(f"{gguf.path.name} lacks metadata {name}.{key}")
        return value

    n_embd = int(need("embedding_length"))
    n_head = int(need("attention.head_count"))
    head_dim = int(gguf.arch_key("attention.key_length", n_embd // n_head))
    tokens = gguf.get("tokenizer.ggml.tokens")
    n_vocab = int(gguf.arch_key("vocab_size", len(tokens) if tokens is not None else 0))
    if not n_vocab and "token_embd.weight" in gguf.tensors:
        n_vocab = gguf.tensors["token_embd.weight"].shape[0]
    scaling = gguf.arch_key("rope.scaling.type", "none")
    factor = float(gguf.arch_key("rope.scaling.factor", 1.0) or 1.0)
    if scaling not in ("none", "linear") and factor != 1.0:
        raise ModelError(f"RoPE scaling {scaling!r} is not supported (lowbit does linear)")
    return ModelConfig(
        arch_name=name, arch=arch,
        n_layer=int(need("block_count")),
        n_embd=n_embd,
        n_ff=int(need("feed_forward_length")),
        n_head=n_head,
        n_head_kv=int(gguf.arch_key("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_vocab=n_vocab,
        n_ctx_train=int(gguf.arch_key("context_length", 2048)),
        rms_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_base=float(gguf.arch_key("rope.freq_base", 10000.0)),
        rope_base_local=float(gguf.arch_key("rope.freq_base_swa", 10000.0)),
        rope_dims=int(gguf.arch_key("rope.dimension_count", head_dim)),
        rope_freq_scale=1.0 / factor if scaling == "linear" else 1.0,
        sliding_window=int(gguf.arch_key("attention.sliding_window", 0) or 0),
        attn_scale=1.0 / math.sqrt(head_dim),
    )
