"""KL-divergence of a model's next-token distributions against a base model's, as
llama-perplexity's --kl-divergence-base / --kl-divergence do, with a compact base file.

What the base file keeps per scored token (instead of llama.cpp's full 16-bit vocabulary, which
clamps tiny probabilities): the TOP_K most likely token ids (int32) with their log-probabilities
(float32), the probability mass of all other tokens (float32), and the log-probability of the
token that actually comes next (float32): 8 * TOP_K + 8 bytes a token (1,032 B at TOP_K = 128,
against 98 KB for SmolLM2's whole vocabulary in 16 bits). KL(P || Q) is then computed as
    sum over the top-k of p_i (log p_i - log q_i) + P_rest log(P_rest / Q_rest),
which is exact but for the divergence inside the tail (it lumps the tail into one outcome, a
lower bound by the log-sum inequality). tests/test_kld.py and docs/ measure its error against
full float64 KLD.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOP_K = 128
MAGIC = "lowbit-kld-base-1"


class KLDError(ValueError):
    pass


def fingerprint(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()


@dataclass
class BaseRecord:
    top_ids: np.ndarray        # (n, TOP_K) int32
    top_logp: np.ndarray       # (n, TOP_K) float32
    rest_mass: np.ndarray      # (n,) float32
    target_logp: np.ndarray    # (n,) float32


def summarize_base(log_probs: np.ndarray, targets: np.ndarray) -> BaseRecord:
    """The base file's record of scored rows of log-probabilities (float64, (n, vocab))."""
    k = min(TOP_K, log_probs.shape[1])
    top = np.argpartition(-log_probs, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(log_probs, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    top_lp = np.take_along_axis(log_probs, top, axis=1)
    rest = np.clip(1.0 - np.exp(top_lp).sum(axis=1), 0.0, 1.0)
    return BaseRecord(top.astype(np.int32), top_lp.astype(np.float32), rest.astype(np.float32),
                      log_probs[np.arange(len(targets)), targets].astype(np.float32))


def kl_rows(base: BaseRecord, log_q: np.ndarray) -> np.ndarray:
    """KL(base || q) per row, from the base record and the model's log-probabilities."""
    lp = base.top_logp.astype(np.float64)
    p = np.exp(lp)
    lq = np.take_along_axis(log_q, base.top_ids.astype(np.int64), axis=1)
    kl = (p * (lp - lq)).sum(axis=1)
    p_rest = base.rest_mass.astype(np.float64)
    q_rest = np.clip(1.0 - np.exp(lq).sum(axis=1), 1e-300, 1.0)
    tail = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-300)) - np.log(q_rest)), 0.0)
    return np.maximum(kl + tail, 0.0)


class BaseWriter:
    """Collects the base model's records chunk by chunk; save() writes them atomically."""

    def __init__(self, vocab_size: int, n_ctx: int, text_name: str):
        self.vocab_size, self.n_ctx, self.text_name = vocab_size, n_ctx, text_name
        self.records: list[BaseRecord] = []
        self.chunk_tokens: list[np.ndarray] = []

    def add(self, chunk_index: int, chunk: np.ndarray, log_probs: np.ndarray, targets: np.ndarray) -> None:
        self.records.append(summarize_base(log_probs, targets))
        self.chunk_tokens.append(np.asarray(chunk, dtype=np.int64))

    def save(self, path: str | os.PathLike, ppl: float) -> None:
        path = Path(path)
        if not path.parent.exists():
            raise KLDError(f"the directory {path.parent} does not exist")
        meta = {"magic": MAGIC, "vocab_size": self.vocab_size, "n_ctx": self.n_ctx,
                "chunks": len(self.records), "text": self.text_name, "ppl": ppl, "top_k": TOP_K,
                "chunk_tokens": [fingerprint(c) for c in self.chunk_tokens]}
        tmp = path.with_name(path.name + ".partial.npz")
        try:
            np.savez(tmp, meta=np.array(json.dumps(meta)),
                     top_ids=np.concatenate([r.top_ids for r in self.records]),
                     top_logp=np.concatenate([r.top_logp for r in self.records]),
                     rest_mass=np.concatenate([r.rest_mass for r in self.records]),
                     target_logp=np.concatenate([r.target_logp for r in self.records]))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class BaseFile:
    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.exists():
            raise KLDError(f"KL-divergence base file {path} does not exist")
        try:
            z = np.load(path, allow_pickle=False)
            self.meta = json.loads(str(z["meta"]))
            self.top_ids, self.top_logp = z["top_ids"], z["top_logp"]
            self.rest_mass, self.target_logp = z["rest_mass"], z["target_logp"]
        except Exception:
            raise KLDError(f"{path} is not a lowbit KL-divergence base file") from None
        if self.meta.get("magic") != MAGIC:
            raise KLDError(f"{path} is not a lowbit KL-divergence base file")
        self.per_chunk = self.meta["n_ctx"] - 1 - self.meta["n_ctx"] // 2

    def check(self, vocab_size: int, n_ctx: int, chunks: list[np.ndarray]) -> None:
        m = self.meta
        if vocab_size != m["vocab_size"]:
            raise KLDError(f"the base file was made by a model with {m['vocab_size']} tokens, this one has "
                           f"{vocab_size}: it is from another model")
        if n_ctx != m["n_ctx"]:
            raise KLDError(f"the base file was made with -c {m['n_ctx']}, not {n_ctx}")
        if len(chunks) > m["chunks"]:
            raise KLDError(f"the base file holds {m['chunks']} chunks; ask for at most that many")
        for i, chunk in enumerate(chunks):
            if fingerprint(chunk) != m["chunk_tokens"][i]:
                raise KLDError("the evaluation tokens differ from the base file's: it was made from "
                               "another text or with another tokenizer")

    def record(self, chunk_index: int) -> BaseRecord:
        s = slice(chunk_index * self.per_chunk, (chunk_index + 1) * self.per_chunk)
        return BaseRecord(self.top_ids[s], self.top_logp[s], self.rest_mass[s], self.target_logp[s])


class KLDStats:
    """Accumulates, chunk by chunk, what llama-perplexity --kl-divergence reports."""

    def __init__(self, base: BaseFile):
        self.base = base
        self.kl: list[np.ndarray] = []
        self.same_top: list[np.ndarray] = []
        self.dp: list[np.ndarray] = []

    def add(self, chunk_index: int, chunk: np.ndarray, log_probs: np.ndarray, targets: np.ndarray) -> None:
        rec = self.base.record(chunk_index)
        self.kl.append(kl_rows(rec, log_probs))
        self.same_top.append(np.argmax(log_probs, axis=1) == rec.top_ids[:, 0])
        q_target = np.exp(log_probs[np.arange(len(targets)), targets])
        self.dp.append(q_target - np.exp(rec.target_logp.astype(np.float64)))

    def summary(self, ppl: float) -> dict:
        kl = np.concatenate(self.kl)
        dp = np.concatenate(self.dp)
        n = kl.size
        return {
            "mean": float(kl.mean()), "stderr": float(kl.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
            "median": float(np.median(kl)), "p90": float(np.percentile(kl, 90)),
            "p95": float(np.percentile(kl, 95)), "p99": float(np.percentile(kl, 99)),
            "max": float(kl.max()), "same_top": float(np.concatenate(self.same_top).mean()),
            "rms_dp": float(np.sqrt(np.mean(dp * dp))), "base_ppl": self.base.meta["ppl"],
            "ppl_ratio": ppl / self.base.meta["ppl"], "tokens": int(n),
        }

    @staticmethod
    def format(s: dict) -> str:
        return "\n".join([
            f"PPL ratio (this / base):  {s['ppl_ratio']:.4f}   (base PPL {s['base_ppl']:.4f})",
            f"Mean    KLD: {s['mean']:10.6f} +/- {s['stderr']:.6f}",
            f"Median  KLD: {s['median']:10.6f}",
            f"90.0%   KLD: {s['p90']:10.6f}",
            f"95.0%   KLD: {s['p95']:10.6f}",
            f"99.0%   KLD: {s['p99']:10.6f}",
            f"Maximum KLD: {s['max']:10.6f}",
            f"Same top p:  {100 * s['same_top']:.3f} %",
            f"RMS Δp:      {100 * s['rms_dp']:.3f} %",
        ])
