"""A slow, plain-numpy forward pass: the reference the fast runtime is held against.

Independent of lowbit's runtime on purpose: weights come from gguf-py's reader and dequantize,
everything runs in float64, one token at a time, with the formulas written out.
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
        self.w = {}
        for t in r.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
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
        """Logits (float64) after each token of `tokens`, evaluated one at a time."""
        W = self.w
        keys = [[] for _ in range(self.n_layer)]
        vals = [[] for _ in range(self.n_layer)]
        out = []
        for pos, tok in enumerate(tokens):
            x = W["token_embd.weight"][tok].copy()
            if self.gemma:
                x *= math.sqrt(self.n_embd)
            for l in range(self.n_layer):
                p = f"blk.{l}."
                sliding = self.gemma and self.window and (l + 1) % 6 != 0
                base = 10000.0 if sliding else self.base
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
                keys[l].append(k)
                vals[l].append(v)
                heads = []
                for hh in range(self.n_head):
                    g = hh // (self.n_head // self.n_kv)
                    visible = [j for j in range(pos + 1) if not (sliding and pos - j >= self.window)]
                    s = np.array([q[hh] @ keys[l][j][g] for j in visible]) / math.sqrt(self.hd)
                    s = np.exp(s - s.max())
                    s /= s.sum()
                    heads.append(sum(s[i] * vals[l][j][g] for i, j in enumerate(visible)))
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
                x = x + f
            h = self.norm(x, W["output_norm.weight"])
            out.append(W.get("output.weight", W["token_embd.weight"]) @ h)
        return np.array(out)

    def greedy(self, prompt, n):
        tokens = list(prompt)
        for _ in range(n):
            tokens.append(int(np.argmax(self.logits(tokens)[-1])))
        return tokens[len(prompt):]
