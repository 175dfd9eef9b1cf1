"""The layout the integer kernels read: one weight encoding and one scale encoding per type.

A quantized (n_rows x n_cols) matrix is held as one uint8 array q[G, n_blocks * block_bytes]:
rows in groups of GROUP = 16 (the last group padded with zero rows), and for each block of the
type (32 or 256 columns) of a group, its weights (weight_codes.py) followed by its scales
(scale_codes.py). Per sub-block of `sub` weights of a row

    w = scale * value - min       value = the weight encoding's decoded byte (0..255)

where min = OFF * scale for the symmetric types (OFF per row, taken off the integer dot product
with the activation sums) and is stored for the affine ones. The kernels (packed.py) are one
token-tiled loop for every layout; a layout only brings its step decoder and scale decoder.

Adding a weight format (e.g. an i-quant grid kept at its file's bits):
  1. In quant/formats/<family>.py write unpack(w, o, u, rec, y): one GGUF block of one row ->
     u, one code per weight (uint8[block_size], any meaning your step decoder gives it), and rec,
     the block's scale fields as bytes. Register the type with
     Packing(weights, scales, sub, offset, unpack[, table]) (quant/types.py). quant never
     imports runtime: the registry names the encodings by string.
  2. If no weight encoding fits, add a WeightCode to weight_codes.py: step_bytes (bytes per
     64 values: 16 rows x 4 columns), steps_multiple, and two njit functions:
       step(q, base, nsteps, s) -> i32x16: the 64 value bytes of step s (columns 4s..4s+3 of the
         block stored from q[base]; lane i = row i), decoded in registers (simd.py: loads,
         shifts, lookup16 for a 16-entry table, ...). Values are unsigned bytes (vpdpbusd);
         signed weights get an OFF (symmetric) or a stored min (affine).
       pack(tmp, q, base, nsteps): the inverse, at load: tmp holds the block's u as u8 steps
         (byte 64 s + 4 i + c = u of row i, column 4 s + c).
     Name it in weight_code(). Codes may be indices decoded through a table (lut4 does this).
  3. If no scale encoding fits, add a ScaleCode to scale_codes.py: fields(n_sub) and
     scale/minimum(q, at, n_sub, j) -> f32x16.
  4. tests/test_kernels.py runs every registered type through the kernels against decode(W) @ x,
     checks the decoded layout against the exact decoder and the resident bytes against the
     file's (at most 1.10x).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from lowbit.quant.types import QuantType

from .scale_codes import SCALE_CODES, ScaleCode
from .weight_codes import WeightCode, weight_code

GROUP = 16   # rows per group: the 16 i32 lanes of a zmm register


@dataclass(frozen=True)
class Layout:
    weights: WeightCode
    scales: ScaleCode
    block: int      # weights per block (the type's block)
    sub: int        # weights per scale
    offset: int     # OFF of a symmetric type; -1: affine

    @property
    def affine(self) -> bool:
        return self.offset < 0

    @property
    def nsteps(self) -> int:
        return self.block // 4

    @property
    def n_sub(self) -> int:
        return self.block // self.sub

    @property
    def weight_bytes(self) -> int:
        """Bytes of one block's weights for a group of 16 rows."""
        return self.weights.bytes(self.nsteps)

    @property
    def block_bytes(self) -> int:
        return self.weight_bytes + self.scales.bytes(self.n_sub)

    @property
    def kernel_key(self):
        """What the kernel is specialised on (OFF is per row, so types differing only in OFF
        share a kernel and can be stacked)."""
        return self.weights, self.scales, self.block, self.sub, self.affine

    def packed_bytes(self, n_rows: int, n_cols: int) -> int:
        return -(-n_rows // GROUP) * (n_cols // self.block) * self.block_bytes


@lru_cache(maxsize=None)
def layout_of(qtype: QuantType) -> Layout | None:
    """The integer kernels' layout of a type, or None for the float types."""
    p = qtype.packing
    if p is None:
        return None
    lay = Layout(weight_code(p.weights, p.table), SCALE_CODES[p.scales], qtype.block_size, p.sub, p.offset)
    if lay.nsteps % lay.weights.steps_multiple or p.sub not in (16, 32):
        # sub-blocks of 16 or 32: the activations' sums are per 16 and their scales per 32
        raise ValueError(f"{qtype.name}: {p.weights} needs blocks of a multiple of "
                         f"{4 * lay.weights.steps_multiple} and sub-blocks of 16 or 32")
    return lay
