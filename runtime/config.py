"""Model hyperparameters from GGUF metadata, and what each supported architecture does."""
from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.quant.errors import LowbitError
from lowbit.quant.gguffile import GGUFFile


class ModelError(LowbitError):
    """A model file lowbit cannot run; the message names what is missing or unsupported."""


class ContextFullError(ModelError):
    """More tokens than the context (the KV cache) holds."""


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


class HyperparameterError(ModelError):
    """A hyperparameter that is missing, of the wrong kind, out of range or inconsistent with the
    tensors; the message names the key and the values."""


_MISSING = object()


class _Metadata:
    """Typed reads of `<arch>.<suffix>` keys, each refused in one sentence naming the key."""

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf
        self.arch = gguf.architecture

    def key(self, suffix: str) -> str:
        return f"{self.arch}.{suffix}"

    def raw(self, suffix: str, default=_MISSING):
        value = self.gguf.metadata.get(self.key(suffix), default)
        if value is _MISSING:
            raise HyperparameterError(f"{self.gguf.path.name} lacks metadata {self.key(suffix)}")
        return value

    def int(self, suffix: str, default=_MISSING, minimum: int = 1) -> int:
        value = self.raw(suffix, default)
        if hasattr(value, "__len__") and not isinstance(value, str):
            raise HyperparameterError(f"{self.key(suffix)} holds {len(value)} values (one per layer?); "
                                      f"lowbit runs models with one value")
        if isinstance(value, bool) or not isinstance(value, int):
            raise HyperparameterError(f"{self.key(suffix)} is {value!r}, not a whole number")
        if value < minimum:
            raise HyperparameterError(f"{self.key(suffix)} is {value}, but must be at least {minimum}")
        return value

    def float(self, suffix: str, default=_MISSING, positive: bool = True) -> float:
        value = self.raw(suffix, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HyperparameterError(f"{self.key(suffix)} is {value!r}, not a number")
        if not math.isfinite(value) or (positive and value <= 0):
            raise HyperparameterError(f"{self.key(suffix)} is {value}, but must be a positive number")
        return float(value)


def read_config(gguf: GGUFFile) -> ModelConfig:
    """The hyperparameters, each checked (positive, consistent with each other and with the
    tensors' shapes: check_tensors) so that no bad value reaches a kernel."""
    name = gguf.architecture
    if name not in ARCHITECTURES:
        raise ModelError(f"architecture {name!r} is not supported; lowbit runs "
                         f"{', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    md = _Metadata(gguf)
    n_embd = md.int("embedding_length")
    n_head = md.int("attention.head_count")
    n_head_kv = md.int("attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise HyperparameterError(f"{md.key('attention.head_count')} = {n_head} is not a multiple of "
                                  f"{md.key('attention.head_count_kv')} = {n_head_kv}")
    if md.key("attention.key_length") not in gguf.metadata and n_embd % n_head:
        raise HyperparameterError(f"{md.key('embedding_length')} = {n_embd} is not a multiple of "
                                  f"{md.key('attention.head_count')} = {n_head} (and no key_length is given)")
    head_dim = md.int("attention.key_length", n_embd // n_head)
    value_dim = md.int("attention.value_length", head_dim)
    if value_dim != head_dim:
        raise HyperparameterError(f"{md.key('attention.value_length')} = {value_dim} differs from "
                                  f"{md.key('attention.key_length')} = {head_dim}; lowbit runs equal lengths")
    rope_dims = md.int("rope.dimension_count", head_dim)
    if rope_dims > head_dim or rope_dims % 2:
        raise HyperparameterError(f"{md.key('rope.dimension_count')} = {rope_dims} must be even and at most "
                                  f"the head length {head_dim}")
    tokens = gguf.get("tokenizer.ggml.tokens")
    embd = gguf.tensors.get("token_embd.weight")
    n_vocab = md.int("vocab_size", len(tokens) if isinstance(tokens, list) and tokens
                     else (embd.shape[0] if embd is not None else _MISSING))
    scaling = md.raw("rope.scaling.type", "none")
    if not isinstance(scaling, str):
        raise HyperparameterError(f"{md.key('rope.scaling.type')} is {scaling!r}, not a name")
    factor = md.float("rope.scaling.factor", 1.0, positive=False) or 1.0
    if factor <= 0:
        raise HyperparameterError(f"{md.key('rope.scaling.factor')} is {factor}, but must be positive")
    if scaling not in ("none", "linear") and factor != 1.0:
        raise ModelError(f"RoPE scaling {scaling!r} is not supported (lowbit does linear)")
    cfg = ModelConfig(
        arch_name=name, arch=arch,
        n_layer=md.int("block_count"),
        n_embd=n_embd,
        n_ff=md.int("feed_forward_length"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_vocab=n_vocab,
        n_ctx_train=md.int("context_length", 2048),
        rms_eps=md.float("attention.layer_norm_rms_epsilon"),
        rope_base=md.float("rope.freq_base", 10000.0),
        rope_base_local=md.float("rope.freq_base_swa", 10000.0),
        rope_dims=rope_dims,
        rope_freq_scale=1.0 / factor if scaling == "linear" else 1.0,
        sliding_window=md.int("attention.sliding_window", 0, minimum=0),
        attn_scale=1.0 / math.sqrt(head_dim),
    )
    check_tensors(cfg, gguf, md)
    return cfg


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name the model may use, with the numpy shape the hyperparameters give it."""
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    shapes = {"token_embd.weight": (cfg.n_vocab, cfg.n_embd), "output.weight": (cfg.n_vocab, cfg.n_embd),
              "output_norm.weight": (cfg.n_embd,)}
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        shapes.update({
            p + "attn_norm.weight": (cfg.n_embd,), p + "ffn_norm.weight": (cfg.n_embd,),
            p + "attn_q.weight": (q, cfg.n_embd), p + "attn_q.bias": (q,),
            p + "attn_k.weight": (kv, cfg.n_embd), p + "attn_k.bias": (kv,),
            p + "attn_v.weight": (kv, cfg.n_embd), p + "attn_v.bias": (kv,),
            p + "attn_output.weight": (cfg.n_embd, q), p + "attn_output.bias": (cfg.n_embd,),
            p + "ffn_gate.weight": (cfg.n_ff, cfg.n_embd), p + "ffn_gate.bias": (cfg.n_ff,),
            p + "ffn_up.weight": (cfg.n_ff, cfg.n_embd), p + "ffn_up.bias": (cfg.n_ff,),
            p + "ffn_down.weight": (cfg.n_embd, cfg.n_ff), p + "ffn_down.bias": (cfg.n_embd,),
            p + "attn_q_norm.weight": (cfg.head_dim,), p + "attn_k_norm.weight": (cfg.head_dim,),
            p + "post_attention_norm.weight": (cfg.n_embd,), p + "post_ffw_norm.weight": (cfg.n_embd,),
        })
    return shapes


# The hyperparameter behind each dimension of a tensor, to name in the message when they disagree.
_WIDTH_KEYS = {"attn_q": ("attention.head_count x key_length", "embedding_length"),
               "attn_k": ("attention.head_count_kv x key_length", "embedding_length"),
               "attn_v": ("attention.head_count_kv x key_length", "embedding_length"),
               "attn_output": ("embedding_length", "attention.head_count x key_length"),
               "ffn_gate": ("feed_forward_length", "embedding_length"),
               "ffn_up": ("feed_forward_length", "embedding_length"),
               "ffn_down": ("embedding_length", "feed_forward_length"),
               "token_embd": ("vocab_size (the tokenizer's tokens)", "embedding_length"),
               "output": ("vocab_size (the tokenizer's tokens)", "embedding_length")}


def check_tensors(cfg: ModelConfig, gguf: GGUFFile, md: _Metadata) -> None:
    """The tensors the model uses have the shapes its hyperparameters give them, and the blocks
    are the ones block_count says. (Missing tensors are reported when the model loads them.)"""
    want = expected_shapes(cfg)
    for tname, info in gguf.tensors.items():
        if tname.startswith("blk."):
            layer = tname.split(".")[1]
            if not layer.isdigit() or int(layer) >= cfg.n_layer:
                raise HyperparameterError(f"{md.key('block_count')} is {cfg.n_layer}, but the file has "
                                          f"the tensor {tname}")
        shape = want.get(tname)
        if shape is None or tuple(info.shape) == shape:
            continue
        kind = tname.split(".")[-2] if tname.startswith("blk.") else tname.split(".")[0]
        keys = _WIDTH_KEYS.get(kind)
        which = (f" (rows from {keys[0]}, columns from {keys[1]})" if keys and len(shape) == 2
                 else f" (from {keys[1] if keys else 'the hyperparameters'})" if len(shape) == 1 else "")
        raise HyperparameterError(f"tensor {tname} has shape {' x '.join(map(str, info.shape))}, but the "
                                  f"hyperparameters give it {' x '.join(map(str, shape))}{which}")
