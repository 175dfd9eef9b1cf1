"""Next-token sampling with llama.cpp's knobs, applied in its order: repetition penalty, top-k,
top-p, min-p (on the untempered distribution), then temperature. temp <= 0 is greedy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplerSettings:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None


class Sampler:
    def __init__(self, settings: SamplerSettings | None = None):
        self.s = settings or SamplerSettings()
        self.rng = np.random.default_rng(self.s.seed)

    def _penalize(self, logits: np.ndarray, history) -> np.ndarray:
        if self.s.repeat_penalty == 1.0 or not history or self.s.repeat_last_n == 0:
            return logits
        recent = np.unique(np.asarray(history[-self.s.repeat_last_n:], dtype=np.int64))
        vals = logits[recent]
        # llama.cpp: divide positive logits, multiply negative ones
        logits[recent] = np.where(vals > 0, vals / self.s.repeat_penalty, vals * self.s.repeat_penalty)
        return logits

    def sample(self, logits: np.ndarray, history=()) -> int:
        logits = self._penalize(np.array(logits, dtype=np.float64), list(history))
        if self.s.temp <= 0:
            return int(np.argmax(logits))
        order = np.argsort(-logits, kind="stable")
        if self.s.top_k > 0:
            order = order[:self.s.top_k]
        cand = logits[order]
        probs = np.exp(cand - cand[0])
        probs /= probs.sum()
        keep = len(order)
        if self.s.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), self.s.top_p)) + 1)
        if self.s.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(probs >= self.s.min_p * probs[0]))))
        cand = cand[:keep] / self.s.temp
        p = np.exp(cand - cand[0])
        p /= p.sum()
        return int(order[self.rng.choice(keep, p=p)])
