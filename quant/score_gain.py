"""The gain of the attention score matrices: attn_q and attn_k rows at their least-squares gain.

Most encoders carry a row at a gain a little above its least-squares fit (docs/encoders.md: a
row shrunk toward zero by its relative error reads worse through the layers). The query and key
projections are the exception. An attention logit is the product of a query and a key, so the
noise quantization leaves in either adds variance to every logit, which already sharpens the
softmax; a gain above the fit sharpens it further. On Qwen2.5-Coder-1.5B, scaling only the
IQ2_S attn_q/attn_k blocks of lowbit's IQ3_XXS file down to their least-squares gain (about 8 %)
cut the file's mean KLD by a quarter; going past it made it worse again.

So these two kinds of matrix are encoded twice: once as any other, then each row again after
multiplying it by the least-squares gain <q,x>_w / <q,q>_w of its first encoding q (w the
importance). The encoders are scale-equivariant up to the f16 rounding of their scales, so the
second encoding is the first one's codes at that gain, to within the rounding.

At IQ1's error level (relative errors near 0.5) the full gain, about 0.88, goes too far: on the
tuning text (8 chunks of wiki.valid.raw) Qwen2.5-Coder-1.5B's IQ1_M file read at mean KLD 1.632
with it, 1.600 without the second encoding, and 1.529 at the square root of the gain. So the
1-bit types take the gain to the power GAIN_POWER["iq1"]; the others take it whole (the best of
those tried for IQ3_XXS's query and key matrices).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .decode import dequantize
from .encode import quantize
from .jit_cache import cached_kernel
from .types import QuantType

SCORE_KINDS = ("attn_q.weight", "attn_k.weight")
GAIN_LIMITS = (0.5, 1.5)      # a gain outside is no fit at all (a near-empty row): keep 1
GAIN_TOLERANCE = 1e-3         # rows this close to their fit are not encoded again
GAIN_POWER = {"iq1": 0.5}     # per type family: the gain applied is gain ** power (default 1)


def is_score_matrix(name: str) -> bool:
    return name.startswith("blk.") and name.split(".", 2)[-1] in SCORE_KINDS


@cached_kernel(parallel=True, fastmath={"reassoc"})
def _gain_sums(x, q, w, qx, qq):
    """Per row, <q,x>_w and <q,q>_w in float64 (w empty: all ones)."""
    for r in prange(x.shape[0]):
        a = 0.0
        b = 0.0
        for i in range(x.shape[1]):
            wq = float(q[r, i]) * (float(w[i]) if w.shape[0] else 1.0)
            a += wq * float(x[r, i])
            b += wq * float(q[r, i])
        qx[r] = a
        qq[r] = b


def least_squares_gain(rows: np.ndarray, q: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """Per row, the factor g minimising sum w (x - g q)^2: <q,x>_w / <q,q>_w (1 where undefined)."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    y = np.ascontiguousarray(q, dtype=np.float32)
    w = np.zeros(0, np.float32) if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    qx = np.empty(x.shape[0])
    qq = np.empty(x.shape[0])
    _gain_sums(x, y, w, qx, qq)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = qx / qq
    ok = np.isfinite(g) & (g > GAIN_LIMITS[0]) & (g < GAIN_LIMITS[1])
    return np.where(ok, g, 1.0)


def score_gain(rows: np.ndarray, first: np.ndarray, qtype: QuantType, importance: np.ndarray | None) -> np.ndarray:
    """The gain each row of a score matrix is encoded at, given its plain encoding `first`: the
    least-squares gain to the power GAIN_POWER of its type family."""
    gain = least_squares_gain(rows, dequantize(first, qtype, rows.shape), importance)
    return gain ** GAIN_POWER.get(qtype.family, 1.0)


def encode_at_gain(rows: np.ndarray, qtype: QuantType, importance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Encode rows (n_rows, n_cols) as qtype, each row at its score_gain: the bytes and the
    gains. Rows whose gain is within GAIN_TOLERANCE of 1 keep their first encoding."""
    first = quantize(rows, qtype, importance)
    gain = score_gain(rows, first, qtype, importance)
    again = np.abs(gain - 1.0) > GAIN_TOLERANCE
    if again.any():
        first[again] = quantize((rows[again] * gain[again, None]).astype(np.float32), qtype, importance)
    return first, gain


def quantize_tensor_rows(name: str, rows: np.ndarray, qtype: QuantType,
                         importance: np.ndarray | None) -> np.ndarray:
    """The rows of the tensor `name`, encoded as that kind of matrix is."""
    if is_score_matrix(name):
        return encode_at_gain(rows, qtype, importance)[0]
    return quantize(rows, qtype, importance)
