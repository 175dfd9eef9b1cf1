"""A slow, plain-numpy forward pass: the reference the fast runtime is held against.

Independent of lowbit's runtime on purpose: weights come from gguf-py's reader and dequantize,
everything runs in float64 with the formulas written out. It goes through the model a layer at a
time (all tokens through layer 1, then layer 2, ...), each token attending to the ones before it,
and dequantizes a layer's weights only while that layer runs, so that a real 1.5B model fits in
memory: the embedding is read a row per token and the output matrix a slice of rows at a time.
"""
from __future__ import annotations

import math

import gguf
import numpy as np


class ReferenceModel:
    def __init__(self, path):
        r = gguf.GGUFReader(str(path))
        self.meta = {}
        for f in r.fields.values():
            if not f.types:
                continue
            if f.types[0] == gguf.GGUFValueType.STRING:
                self.meta[f.name] = bytes(f.parts[f.data[0]]).decode()
            elif f.types[0] != gguf.GGUFValueType.ARRAY:
                self.meta[f.name] = f.parts[f.data[0]][0].item()
        self.tensors = {t.name: t for t in r.tensors}
        self.w = _Weights(self.tensors)
        a = self.arch = self.meta["general.architecture"]
        m = self.meta
        self.n_layer = m[f"{a}.block_count"]
        self.n_embd = m[f"{a}.embedding_length"]
        self.n_head = m[f"{a}.attention.head_count"]
        self.n_kv = m[f"{a}.attention.head_count_kv"]
        self.hd = m.get(f"{a}.attention.key_length", self.n_embd // self.n_head)
        self.eps = m[f"{a}.attention.layer_norm_rms_epsilon"]
        self.base = m.get(f"{a}.rope.freq_base", 10000.0)
        self.window = m.get(f"{a}.attention.sliding_window", 0)
        self.neox = a in ("qwen2", "qwen3", "gemma3")
        self.gemma = a == "gemma3"

    def norm(self, x, w):
        return x / math.sqrt(float(np.mean(x * x)) + self.eps) * w

    def rope(self, v, pos, base):
        out = v.copy()
        d = len(v)
        for i in range(d // 2):
            theta = pos * base ** (-2.0 * i / d)
            c, s = math.cos(theta), math.sin(theta)
            a, b = (i, i + d // 2) if self.neox else (2 * i, 2 * i + 1)
            out[a] = v[a] * c - v[b] * s
            out[b] = v[a] * s + v[b] * c
        return out

    def logits(self, tokens):
        """Logits (float64) after each token of `tokens`: token i sees tokens 0..i."""
        W = self.w
        embd = self.w.rows("token_embd.weight", tokens)
        xs = [embd[i] * (math.sqrt(self.n_embd) if self.gemma else 1.0) for i in range(len(tokens))]
        for l in range(self.n_layer):
            p = f"blk.{l}."
            sliding = self.gemma and self.window and (l + 1) % 6 != 0
            base = 10000.0 if sliding else self.base
            keys, vals = [], []
            for pos, x in enumerate(xs):
                h = self.norm(x, W[p + "attn_norm.weight"])
                q = W[p + "attn_q.weight"] @ h + W.get(p + "attn_q.bias", 0)
                k = W[p + "attn_k.weight"] @ h + W.get(p + "attn_k.bias", 0)
                v = W[p + "attn_v.weight"] @ h + W.get(p + "attn_v.bias", 0)
                q = q.reshape(self.n_head, self.hd)
                k = k.reshape(self.n_kv, self.hd)
                v = v.reshape(self.n_kv, self.hd)
                if p + "attn_q_norm.weight" in W:
                    q = np.stack([self.norm(qh, W[p + "attn_q_norm.weight"]) for qh in q])
                    k = np.stack([self.norm(kh, W[p + "attn_k_norm.weight"]) for kh in k])
                q = np.stack([self.rope(qh, pos, base) for qh in q])
                k = np.stack([self.rope(kh, pos, base) for kh in k])
                keys.append(k)
                vals.append(v)
                heads = []
                for hh in range(self.n_head):
                    g = hh // (self.n_head // self.n_kv)
                    visible = [j for j in range(pos + 1) if not (sliding and pos - j >= self.window)]
                    s = np.array([q[hh] @ keys[j][g] for j in visible]) / math.sqrt(self.hd)
                    s = np.exp(s - s.max())
                    s /= s.sum()
                    heads.append(sum(s[i] * vals[j][g] for i, j in enumerate(visible)))
                o = W[p + "attn_output.weight"] @ np.concatenate(heads)
                if self.gemma:
                    o = self.norm(o, W[p + "post_attention_norm.weight"])
                x = x + o
                h = self.norm(x, W[p + "ffn_norm.weight"])
                g = W[p + "ffn_gate.weight"] @ h
                if self.gemma:
                    g = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
                else:
                    g = g / (1 + np.exp(-g))
                f = W[p + "ffn_down.weight"] @ (g * (W[p + "ffn_up.weight"] @ h))
                if self.gemma:
                    f = self.norm(f, W[p + "post_ffw_norm.weight"])
                xs[pos] = x + f
            W.forget(p)
        hs = np.stack([self.norm(x, W["output_norm.weight"]) for x in xs])
        out_name = "output.weight" if "output.weight" in W else "token_embd.weight"
        return W.times_rows(out_name, hs)

    def greedy(self, prompt, n):
        tokens = list(prompt)
        for _ in range(n):
            tokens.append(int(np.argmax(self.logits(tokens)[-1])))
        return tokens[len(prompt):]


class _Weights:
    """Tensors by name, dequantized to float64 on first use and kept until forget(prefix)."""

    ROW_SLICE = 8192     # rows of a large matrix dequantized at a time by times_rows

    def __init__(self, tensors):
        self.tensors = tensors
        self.done = {}

    def shape(self, name):
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def _decode(self, name, rows=None):
        t = self.tensors[name]
        data = t.data if rows is None else t.data[rows]
        shape = self.shape(name) if rows is None else (len(rows),) + self.shape(name)[1:]
        return gguf.quants.dequantize(data, t.tensor_type).reshape(shape).astype(np.float64)

    def __contains__(self, name):
        return name in self.tensors

    def __getitem__(self, name):
        if name not in self.done:
            self.done[name] = self._decode(name)
        return self.done[name]

    def get(self, name, default):
        return self[name] if name in self else default

    def forget(self, prefix):
        for name in [n for n in self.done if n.startswith(prefix)]:
            del self.done[name]

    def rows(self, name, indices):
        return self._decode(name, np.asarray(indices))

    def times_rows(self, name, hs):
        """hs @ W.T for a matrix W too large to dequantize whole: a slice of rows at a time."""
        n = self.shape(name)[0]
        return np.concatenate([hs @ self._decode(name, np.arange(a, min(n, a + self.ROW_SLICE))).T
                               for a in range(0, n, self.ROW_SLICE)], axis=1)
