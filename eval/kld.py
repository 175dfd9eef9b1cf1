"""KL-divergence of a model's next-token distributions against a base model's, as
llama-perplexity's --kl-divergence-base / --kl-divergence do.

The base file keeps, for every scored token, the base model's whole log-probability vector in
float16: 2 bytes per vocabulary entry (98 KB a token for SmolLM2's 49,152 tokens, 512 KB for
Gemma-3's 262,144). llama.cpp instead scales each vector into uint16 between its minimum and
maximum, which clamps and flattens the smallest probabilities; plain f16 log-probabilities
keep a relative precision of 2^-11 everywhere. Measured on SmolLM2 (2 chunks of wiki.test.raw,
full float64 as the truth): the mean KLD from the f16 file is off by +0.004 % (against a
Q4_K_M requantization) and -0.0003 % (IQ2_XXS), at most 1e-4 and 8e-4 nats on any one token.
Keeping only the 128 most likely tokens plus the lumped rest, which we tried first, was 15 %
low: these small models spread real mass over thousands of tokens.

File layout: 16 bytes of magic | float16[tokens, vocab] | JSON metadata | its length (u64 LE).
The matrix is written chunk by chunk and read memory-mapped, so neither side holds it in RAM.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from lowbit.quant.errors import LowbitError

MAGIC = b"lowbit-kld-f16-1"     # 16 bytes
ROWS_AT_ONCE = 32               # rows of float64 vocabulary vectors in memory at a time


class KLDError(LowbitError):
    """A base file that cannot be read, or one made from another model, text or -c."""


def fingerprint(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()


def normalised_blocks(base_logp16: np.ndarray):
    """(start, float64 log-probabilities renormalised) over blocks of ROWS_AT_ONCE rows."""
    for s in range(0, len(base_logp16), ROWS_AT_ONCE):
        lp = base_logp16[s:s + ROWS_AT_ONCE].astype(np.float64)
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
        yield s, lp


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray, p: np.ndarray | None = None) -> np.ndarray:
    """KL(p || q) per row from log-probabilities (p = exp(log_p), passed in when it is reused),
    clamped at 0 against rounding."""
    if p is None:
        p = np.exp(log_p)
    return np.maximum((p * (log_p - log_q)).sum(axis=1), 0.0)


def kl_rows(base_logp16: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(base || q) per row, from the stored f16 base log-probabilities and the model's
    float64 log-probabilities."""
    out = np.empty(len(log_q))
    for s, lp in normalised_blocks(base_logp16):
        out[s:s + len(lp)] = kl_divergence(lp, log_q[s:s + len(lp)])
    return out


class BaseWriter:
    """Writes the base model's log-probabilities chunk by chunk; save() completes the file and
    renames it into place (nothing is left at the path if the run stops)."""

    def __init__(self, path: str | os.PathLike, vocab_size: int, n_ctx: int, text_name: str):
        self.path = Path(path)
        if not self.path.parent.exists():
            raise KLDError(f"the directory {self.path.parent} does not exist")
        self.vocab_size, self.n_ctx, self.text_name = vocab_size, n_ctx, text_name
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.f = open(self.tmp, "wb")
        self.f.write(MAGIC)
        self.chunk_tokens: list[str] = []
        self.rows = 0

    def add(self, chunk_index: int, chunk: np.ndarray, log_probs: np.ndarray, targets: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(log_probs, dtype=np.float16).tobytes())
        self.chunk_tokens.append(fingerprint(chunk))
        self.rows += len(log_probs)

    def save(self, ppl: float) -> None:
        meta = {"vocab_size": self.vocab_size, "n_ctx": self.n_ctx, "chunks": len(self.chunk_tokens),
                "rows": self.rows, "text": self.text_name, "ppl": ppl, "chunk_tokens": self.chunk_tokens}
        blob = json.dumps(meta).encode()
        self.f.write(blob)
        self.f.write(struct.pack("<Q", len(blob)))
        self.f.close()
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


class BaseFile:
    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.exists():
            raise KLDError(f"KL-divergence base file {path} does not exist")
        bad = KLDError(f"{path} is not a lowbit KL-divergence base file (or it is truncated)")
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < len(MAGIC) + 8 or f.read(len(MAGIC)) != MAGIC:
                raise bad
            f.seek(size - 8)
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - len(MAGIC) - 8:
                raise bad
            f.seek(size - 8 - n)
            try:
                self.meta = json.loads(f.read(n))
            except ValueError:
                raise bad from None
        m = self.meta
        ints = ("rows", "vocab_size", "n_ctx", "chunks")
        if (not isinstance(m, dict) or not all(type(m.get(k)) is int and m[k] >= 0 for k in ints)
                or not isinstance(m.get("chunk_tokens"), list) or len(m["chunk_tokens"]) != m["chunks"]
                or not isinstance(m.get("ppl"), (int, float))
                or size != len(MAGIC) + 2 * m["rows"] * m["vocab_size"] + n + 8):
            raise bad
        self.logp = np.memmap(path, dtype=np.float16, mode="r", offset=len(MAGIC),
                              shape=(m["rows"], m["vocab_size"]))
        self.per_chunk = m["n_ctx"] - 1 - m["n_ctx"] // 2

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

    def chunk(self, i: int) -> np.ndarray:
        return self.logp[i * self.per_chunk:(i + 1) * self.per_chunk]


class KLDStats:
    """Accumulates, chunk by chunk, what llama-perplexity --kl-divergence reports."""

    def __init__(self, base: BaseFile):
        self.base = base
        self.kl: list[np.ndarray] = []
        self.same_top: list[np.ndarray] = []
        self.dp: list[np.ndarray] = []

    def add(self, chunk_index: int, chunk: np.ndarray, log_probs: np.ndarray, targets: np.ndarray) -> None:
        kl = np.empty(len(targets))
        same = np.empty(len(targets), dtype=bool)
        dp = np.empty(len(targets))
        for s, lp in normalised_blocks(self.base.chunk(chunk_index)):
            e = s + len(lp)
            lq = log_probs[s:e]
            kl[s:e] = kl_divergence(lp, lq)
            same[s:e] = np.argmax(lq, axis=1) == np.argmax(lp, axis=1)
            rows = np.arange(len(lp))
            dp[s:e] = np.exp(lq[rows, targets[s:e]]) - np.exp(lp[rows, targets[s:e]])
        self.kl.append(kl)
        self.same_top.append(same)
        self.dp.append(dp)

    def summary(self, ppl: float) -> dict:
        kl = np.concatenate(self.kl)
        dp = np.concatenate(self.dp)
        if not (np.isfinite(kl).all() and np.isfinite(dp).all()):
            raise KLDError("the KL-divergence is not finite: the base file holds NaN or infinite "
                           "log-probabilities (it is damaged)")
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


# --- whole runs, shared by `lowbit perplexity` and the ladder -------------------------------

def write_base(model, tokenizer, text: str, text_name: str, path, n_ctx: int, n_chunks: int | None,
               on_chunk=None):
    """Run the base model over the text and store its distributions in `path`; its PPL result."""
    from .perplexity import perplexity
    writer = BaseWriter(path, model.cfg.n_vocab, n_ctx, text_name)
    try:
        res = perplexity(model, tokenizer, text, n_ctx, n_chunks, on_chunk=on_chunk, on_logits=writer.add)
    except BaseException:
        writer.abandon()
        raise
    writer.save(res.ppl)
    return res


def compare_to_base(model, tokenizer, text: str, base_path, n_ctx: int, n_chunks: int | None,
                    on_chunk=None):
    """PPL of the model over the text and its KLD statistics against the base file (checked to
    be from a model with this vocabulary, the same text and -c); (PPL result, summary dict)."""
    from .perplexity import chunk_tokens, perplexity
    base = BaseFile(base_path)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    chunks = chunk_tokens(tokenizer.encode(text, add_special=True), n_ctx,
                          n_chunks or base.meta["chunks"], bos)
    base.check(model.cfg.n_vocab, n_ctx, chunks)
    stats = KLDStats(base)
    res = perplexity(model, tokenizer, text, n_ctx, len(chunks), on_chunk=on_chunk, on_logits=stats.add)
    return res, stats.summary(res.ppl)
