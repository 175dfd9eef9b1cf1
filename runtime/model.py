"""A transformer that runs GGUF files: every linear layer through its own type's fused kernels.

Prompt tokens go through in batches (matrix-matrix kernels), generated tokens one at a time
(matrix-vector kernels); the KV cache holds float32 keys and values for n_ctx positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.quant.decode import dequantize
from lowbit.quant.gguffile import GGUFFile, open_gguf

from .config import ContextFullError, ModelConfig, ModelError, read_config
from .finite import check_weights
from .kernels import QuantMatrix, StackedMatrix
from .kernels.packed import ACTIVATION_PLANES, PARALLEL_QUANTIZE_TOKENS
from .kernels.attention import attention, cache_length
from .kernels.elementwise import act_mul, qk_rope_store, residual_norm, rms_norm
from .ops import rope_tables
from .threads import threads_for_forward


# Activation precision of the integer kernels (kernels/packed.py): "exact" quantizes activations
# to three int8 planes per block of 32 (float32-exact products: perplexity, KL-divergence);
# "fast" to one plane, as llama.cpp's Q8_0 activations (generation, chat, bench).
PRECISIONS = {"exact": ACTIVATION_PLANES, "fast": 1}
# The warm-up prompt of Model.prepare: long enough for the kernels' many-token variants.
PREPARE_TOKENS = PARALLEL_QUANTIZE_TOKENS


class Linear:
    """y = W x (+ b) for one weight matrix, choosing the kernel by the number of tokens.

    observer(name, x), when set, sees every batch of activations entering the matrix (this is
    how importance matrices are collected). planes: the activation precision (PRECISIONS).
    """

    def __init__(self, matrix: QuantMatrix, bias: np.ndarray | None = None):
        self.matrix = matrix
        self.bias = bias
        self.observer = None
        self.planes = ACTIVATION_PLANES

    @property
    def name(self) -> str:
        return self.matrix.name

    def __call__(self, x: np.ndarray, qa=None) -> np.ndarray:
        """W x (+ b) for the rows of x; qa: x already quantized for the integer kernels (one
        quantization shared by the matrices that read the same activations)."""
        if self.observer is not None:
            self.observer(self.name, x)
        m = self.matrix
        if m.integer:
            y = m.matmul_quantized(qa if qa is not None else m.quantize(x, self.planes))
        else:
            y = m.matvec(x[0])[None, :] if x.shape[0] == 1 else m.matmul(x)
        if self.bias is not None:
            y += self.bias
        return y


def quantize_for(x: np.ndarray, *linears: Linear):
    """x quantized once for the integer kernels of all these matrices, or None."""
    if all(lin.matrix.integer for lin in linears):
        return linears[0].matrix.quantize(x, linears[0].planes)
    return None


class LinearGroup:
    """Linear layers that read the same activations (q, k, v; gate, up): one quantization of
    the activations and, when their matrices can be stacked, one kernel call. The outputs come
    side by side in one (T, sum of rows) array."""

    def __init__(self, linears: list[Linear]):
        self.linears = linears
        mats = [lin.matrix for lin in linears]
        self.stacked = StackedMatrix(mats) if StackedMatrix.can_stack(mats) else None
        self.bias = None      # the stacked product's bias (unstacked, each Linear adds its own)
        if self.stacked is not None and any(lin.bias is not None for lin in linears):
            self.bias = np.concatenate([np.zeros(lin.matrix.n_rows, np.float32) if lin.bias is None else lin.bias
                                        for lin in linears])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.stacked is None:
            xq = quantize_for(x, *self.linears)
            return np.concatenate([lin(x, xq) for lin in self.linears], axis=1)
        for lin in self.linears:
            if lin.observer is not None:
                lin.observer(lin.name, x)
        y = self.stacked.matmul_quantized(self.linears[0].matrix.quantize(x, self.linears[0].planes))
        if self.bias is not None:
            y += self.bias
        return y


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    ffn_norm: np.ndarray
    w_gate: Linear
    w_up: Linear
    w_down: Linear
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None
    post_ffn_norm: np.ndarray | None = None

    def __post_init__(self):
        self.qkv = LinearGroup([self.wq, self.wk, self.wv])
        self.gate_up = LinearGroup([self.w_gate, self.w_up])


class KVCache:
    """Keys transposed (kt[layer, head, dim, position]) and values as rows (v[layer, head,
    position, dim]), float32, for n_ctx positions plus the padding the attention kernel reads
    past the last key (kernels/attention.py)."""

    def __init__(self, cfg: ModelConfig, n_ctx: int):
        n_alloc = cache_length(n_ctx)
        self.kt = np.zeros((cfg.n_layer, cfg.n_head_kv, cfg.head_dim, n_alloc), dtype=np.float32)
        self.v = np.zeros((cfg.n_layer, cfg.n_head_kv, n_alloc, cfg.head_dim), dtype=np.float32)
        self.n_ctx = n_ctx
        self.n_past = 0


class Model:
    def __init__(self, gguf: GGUFFile, check_finite: bool = True):
        self.gguf = gguf
        self.cfg = cfg = read_config(gguf)
        if check_finite:
            check_weights(gguf)
        self._embd = self._matrix("token_embd.weight")
        out_name = "output.weight" if "output.weight" in gguf.tensors else "token_embd.weight"
        self.output = Linear(self._matrix(out_name))
        self.output_norm = self._vector("output_norm.weight")
        self.layers = [self._layer(i) for i in range(cfg.n_layer)]
        self._precision = "exact"

    @classmethod
    def load(cls, path) -> "Model":
        return cls(open_gguf(path))

    # -- loading ---------------------------------------------------------------------------

    def _need(self, name: str):
        info = self.gguf.tensors.get(name)
        if info is None:
            raise ModelError(f"{self.gguf.path.name} has no tensor {name}, which a "
                             f"{self.cfg.arch_name} model needs")
        return info

    def _matrix(self, name: str) -> QuantMatrix:
        info = self._need(name)
        if len(info.shape) != 2:
            raise ModelError(f"tensor {name} should be a matrix, but has shape {info.shape}")
        return QuantMatrix(self.gguf.raw(name), info.qtype, info.shape[0], info.shape[1], name)

    def _vector(self, name: str, optional: bool = False) -> np.ndarray | None:
        if optional and name not in self.gguf.tensors:
            return None
        info = self._need(name)
        return dequantize(self.gguf.raw(name), info.qtype, info.shape).reshape(-1)

    def _linear(self, name: str) -> Linear:
        return Linear(self._matrix(name + ".weight"), self._vector(name + ".bias", optional=True))

    def _layer(self, i: int) -> Layer:
        p = f"blk.{i}."
        return Layer(
            attn_norm=self._vector(p + "attn_norm.weight"),
            wq=self._linear(p + "attn_q"), wk=self._linear(p + "attn_k"),
            wv=self._linear(p + "attn_v"), wo=self._linear(p + "attn_output"),
            ffn_norm=self._vector(p + "ffn_norm.weight"),
            w_gate=self._linear(p + "ffn_gate"), w_up=self._linear(p + "ffn_up"),
            w_down=self._linear(p + "ffn_down"),
            q_norm=self._vector(p + "attn_q_norm.weight", optional=True),
            k_norm=self._vector(p + "attn_k_norm.weight", optional=True),
            post_attn_norm=self._vector(p + "post_attention_norm.weight", optional=self.cfg.arch.post_norms is False),
            post_ffn_norm=self._vector(p + "post_ffw_norm.weight", optional=self.cfg.arch.post_norms is False),
        )

    @property
    def precision(self) -> str:
        """The activation precision of the integer products: "exact" (the default) or "fast"."""
        return self._precision

    @precision.setter
    def precision(self, name: str) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
        self._precision = name
        for lin in self.linears(include_output=True):
            lin.planes = PRECISIONS[name]

    def linears(self, include_output: bool = False) -> list[Linear]:
        found = [lin for L in self.layers for lin in (L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down)]
        return found + [self.output] if include_output else found

    def swap_matrix(self, name: str, matrix: QuantMatrix) -> QuantMatrix:
        """Put `matrix` in the place of weight `name` everywhere the model uses it (the
        embedding lookup and a tied output included, the stacked q/k/v and gate/up products
        rebuilt); returns the matrix it replaced. For measuring one tensor's sensitivity."""
        old = None
        if name == "token_embd.weight":
            old, self._embd = self._embd, matrix
        if self.output.matrix.name == name:
            old, self.output.matrix = self.output.matrix, matrix
        for layer in self.layers:
            for lin in (layer.wq, layer.wk, layer.wv, layer.wo, layer.w_gate, layer.w_up, layer.w_down):
                if lin.matrix.name == name:
                    old, lin.matrix = lin.matrix, matrix
                    layer.__post_init__()  # the groups stack the matrices they were built with
        if old is None:
            raise ModelError(f"the model has no weight matrix {name}")
        return old

    def prepare(self) -> None:
        """Do now what the first forward passes would otherwise do on the way: repack every
        matrix into its kernel layout (stacking q/k/v and gate/up) and load each kernel from
        numba's disk cache, by running a short prompt and one token on a scratch cache (as
        llama.cpp's tools warm up with an empty run). Commands call it while loading, so that
        the time is reported as load time and token rates stay honest.

        One token through every layer meets every matrix; the many-token variants of the other
        kernels (activation quantizer, norms, RoPE, activation) are the same in every layer, so
        the short prompt goes through the first layer only (through all 28 of a 1.5B model, it
        would take half a second)."""
        with threads_for_forward():
            self._forward(np.zeros(1, dtype=np.int64), self.new_cache(1), None, self.layers)
            self._forward(np.zeros(PREPARE_TOKENS, dtype=np.int64), self.new_cache(PREPARE_TOKENS), None,
                          self.layers[:1])

    # -- running -----------------------------------------------------------------------------

    def new_cache(self, n_ctx: int) -> KVCache:
        if n_ctx < 1:
            raise ContextFullError(f"a context of {n_ctx} tokens holds nothing")
        return KVCache(self.cfg, n_ctx)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        rows = self._embd.rows[tokens]
        x = dequantize(rows, self._embd.qtype, (len(tokens), self.cfg.n_embd))
        if self.cfg.arch.embed_scale:
            x *= np.float32(np.sqrt(self.cfg.n_embd))
        return x

    def forward(self, tokens, cache: KVCache, logits_from: int | None = None) -> np.ndarray:
        """Run `tokens` at positions cache.n_past.. and append them to the cache.

        Returns logits (float32) for the tokens from index `logits_from` on (default: the last
        token only), shape (T - logits_from, n_vocab). Runs on numba's thread count, less the
        cores other processes keep busy (runtime/threads.py).
        """
        with threads_for_forward():
            return self._forward(tokens, cache, logits_from, self.layers)

    def _block(self, il: int, L: Layer, x: np.ndarray, h: np.ndarray, kt: np.ndarray, v: np.ndarray, pos0: int,
               rope: tuple[np.ndarray, np.ndarray], next_norm: np.ndarray | None) -> np.ndarray | None:
        """Layer il on the residual stream x (updated in place), h = x normed for it; writes the
        layer's keys and values at pos0.. of kt/v. Returns x normed by next_norm (None: not)."""
        cfg = self.cfg
        eps = cfg.rms_eps
        cos, sin = rope
        # attention: q/k/v in one product; norms, RoPE and the cache write in one call
        qkv = L.qkv(h)
        q = qk_rope_store(qkv, cfg.n_head, cfg.n_head_kv, cfg.head_dim, L.q_norm, L.k_norm, eps, cos, sin,
                          cfg.arch.rope_neox, kt, v, pos0)
        window = cfg.sliding_window if cfg.is_sliding(il) else 0
        a = attention(q, kt, v, pos0, cfg.attn_scale, window)
        h = residual_norm(x, L.wo(a), L.post_attn_norm, L.ffn_norm, eps)
        # feed-forward: gate and up in one product
        f = L.w_down(act_mul(L.gate_up(h), cfg.n_ff, cfg.arch.activation))
        return residual_norm(x, f, L.post_ffn_norm, next_norm, eps)

    def run_layer(self, il: int, x: np.ndarray) -> None:
        """Layer il alone on x (T, n_embd), the residual stream of one sequence at positions
        0..T-1, updated in place: for passes that go through the model a layer at a time over
        stored activations (eval/layer_pass.py). model.embed(tokens) is layer 0's input."""
        cfg = self.cfg
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != cfg.n_embd or not x.flags.c_contiguous:
            raise ValueError(f"run_layer: x must be a contiguous float32 (T, {cfg.n_embd}) array")
        L = self.layers[il]
        n_tokens = x.shape[0]
        rope = rope_tables(np.arange(n_tokens), cfg.rope_dims, cfg.layer_rope_base(il), cfg.rope_freq_scale)
        kt = np.zeros((cfg.n_head_kv, cfg.head_dim, cache_length(n_tokens)), dtype=np.float32)
        v = np.zeros((cfg.n_head_kv, cache_length(n_tokens), cfg.head_dim), dtype=np.float32)
        with threads_for_forward():
            self._block(il, L, x, rms_norm(x, L.attn_norm, cfg.rms_eps), kt, v, 0, rope, None)

    def _forward(self, tokens, cache: KVCache, logits_from: int | None, layers: list[Layer]) -> np.ndarray:
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        n_tokens = len(tokens)
        pos0 = cache.n_past
        if n_tokens == 0:
            raise ModelError("no tokens to evaluate")
        if pos0 + n_tokens > cache.n_ctx:
            raise ContextFullError(f"the context is full: {pos0} + {n_tokens} tokens exceed n_ctx = {cache.n_ctx}")
        if tokens.min() < 0 or tokens.max() >= self._embd.n_rows:
            raise ModelError(f"token id out of range 0..{self._embd.n_rows - 1}")
        positions = np.arange(pos0, pos0 + n_tokens)
        ropes = {}
        x = self.embed(tokens)
        eps = cfg.rms_eps
        h = rms_norm(x, layers[0].attn_norm, eps)
        for il, L in enumerate(layers):
            base = cfg.layer_rope_base(il)
            if base not in ropes:
                ropes[base] = rope_tables(positions, cfg.rope_dims, base, cfg.rope_freq_scale)
            last = il + 1 == len(layers)
            h = self._block(il, L, x, h, cache.kt[il], cache.v[il], pos0, ropes[base],
                            None if last else layers[il + 1].attn_norm)
        cache.n_past = pos0 + n_tokens
        start = n_tokens - 1 if logits_from is None else logits_from
        h = rms_norm(x[start:], self.output_norm, eps)
        return self.output(h)
