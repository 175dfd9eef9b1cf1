"""Weight encodings: how the small unsigned codes u of one block of 16 rows are stored, and the
in-register decoder that turns them back into bytes for vpdpbusd.

Unit of work: a "step" is 4 columns of the 16 rows of a group, 64 values, one zmm register:
lane i holds the values of row i, columns 4s .. 4s + 3 (what vpdpbusd multiplies by 4
activation bytes). A block of the type (32 or 256 columns) has nsteps = block / 4 steps; the
encodings below store them in step_bytes bytes each (bits per weight = step_bytes / 8):

    u8      64  a byte per value, step s at 64 s
    nib4    32  steps in pairs: vector m holds step 2m in its low nibbles, 2m + 1 in its high
    lut4    32  nib4 of 4-bit indices; value = table[u] (vpshufb, the table in a register)
    nib5    40  nib4, then one vector per 8 steps: bit s of byte L = bit 4 of step s's byte L
    nib6    48  nib4, then one vector per 4 steps: bits 2s, 2s + 1 = bits 4, 5 of step s
    crumb2  16  one vector per 4 steps: bits 2s, 2s + 1 of byte L = the value of step s
    crumb3  24  crumb2, then one vector per 8 steps: bit s = bit 2 of step s's value
    iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq1_s, iq1_m: grid indices, sign bits, looked up
            in the type's codebook (grids.py)

Each encoding gives:
    step(q, base, nsteps, s) -> i32x16   njit, inlined: the 64 value bytes of step s of the
                                         block stored from q[base] (nsteps: steps per block)
    pack(tmp, q, base, nsteps)           njit: the block's u, laid out as u8 in tmp (64 nsteps
                                         bytes), stored from q[base] (at load, once)
and may give
    pair(q, base, nsteps, s) -> (step s, step s + 1), s even: for encodings that decode two
                                         steps at once (the grids: one lookup per row serves
                                         8 columns); by default two calls of step
The step decoders are written so that, with s a constant after unrolling, each is one load
(shared by the steps of a vector) and a shift and mask or two.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from numba import njit

from .simd import and_i32x16, load_bytes64, lookup16, or_i32x16, shift_i32x16, splat_i32


@dataclass(frozen=True)
class WeightCode:
    name: str
    step_bytes: int        # bytes per step of 64 values
    steps_multiple: int    # a block's step count must be a multiple of this
    step: Callable
    pack: Callable
    pair: Callable | None = None

    def bytes(self, nsteps: int) -> int:
        return self.step_bytes * nsteps

    @property
    def pairs(self) -> Callable:
        """pair(q, base, nsteps, s) -> (step s, step s + 1), s even."""
        return self.pair if self.pair is not None else _pair_of_steps(self.step)


@lru_cache(maxsize=None)
def _pair_of_steps(step):
    @njit(inline="always")
    def pair(q, base, nsteps, s):
        return step(q, base, nsteps, s), step(q, base, nsteps, s + 1)
    return pair


# -- decoders ---------------------------------------------------------------------------------

@njit(inline="always")
def _nib4_step(q, base, nsteps, s):
    v = load_bytes64(q, base + 64 * (s >> 1))
    return and_i32x16(shift_i32x16(v, -4 * (s & 1)), splat_i32(0x0F0F0F0F))


@njit(inline="always")
def _u8_step(q, base, nsteps, s):
    return load_bytes64(q, base + 64 * s)


@njit(inline="always")
def _nib5_step(q, base, nsteps, s):
    h = load_bytes64(q, base + 32 * nsteps + 64 * (s >> 3))
    # bit s % 8 of each byte -> bit 4 (a shift within a 32-bit lane never mixes the bytes'
    # bits at the positions the mask keeps)
    return or_i32x16(_nib4_step(q, base, nsteps, s),
                     and_i32x16(shift_i32x16(h, 4 - (s & 7)), splat_i32(0x10101010)))


@njit(inline="always")
def _nib6_step(q, base, nsteps, s):
    h = load_bytes64(q, base + 32 * nsteps + 64 * (s >> 2))
    return or_i32x16(_nib4_step(q, base, nsteps, s),
                     and_i32x16(shift_i32x16(h, 4 - 2 * (s & 3)), splat_i32(0x30303030)))


@njit(inline="always")
def _crumb2_step(q, base, nsteps, s):
    v = load_bytes64(q, base + 64 * (s >> 2))
    return and_i32x16(shift_i32x16(v, -2 * (s & 3)), splat_i32(0x03030303))


@njit(inline="always")
def _crumb3_step(q, base, nsteps, s):
    h = load_bytes64(q, base + 16 * nsteps + 64 * (s >> 3))
    return or_i32x16(_crumb2_step(q, base, nsteps, s),
                     and_i32x16(shift_i32x16(h, 2 - (s & 7)), splat_i32(0x04040404)))


# -- packers (scalar: they run once, at load) ---------------------------------------------------

@njit(inline="always")
def _u8_pack(tmp, q, base, nsteps):
    for i in range(64 * nsteps):
        q[base + i] = tmp[i]


@njit(inline="always")
def _nib4_pack(tmp, q, base, nsteps):
    for m in range(nsteps // 2):
        for i in range(64):
            q[base + 64 * m + i] = (tmp[128 * m + i] & 15) | ((tmp[128 * m + 64 + i] & 15) << 4)


@njit(inline="always")
def _high_bits(tmp, q, at, nsteps, per, shift, width):
    """Bits shift .. shift + width - 1 of each value, `per` steps to a vector."""
    mask = (1 << width) - 1
    for v in range(nsteps // per):
        for i in range(64):
            b = 0
            for st in range(per):
                b |= ((tmp[(per * v + st) * 64 + i] >> shift) & mask) << (width * st)
            q[at + 64 * v + i] = b


@njit(inline="always")
def _nib5_pack(tmp, q, base, nsteps):
    _nib4_pack(tmp, q, base, nsteps)
    _high_bits(tmp, q, base + 32 * nsteps, nsteps, 8, 4, 1)


@njit(inline="always")
def _nib6_pack(tmp, q, base, nsteps):
    _nib4_pack(tmp, q, base, nsteps)
    _high_bits(tmp, q, base + 32 * nsteps, nsteps, 4, 4, 2)


@njit(inline="always")
def _crumb2_pack(tmp, q, base, nsteps):
    _high_bits(tmp, q, base, nsteps, 4, 0, 2)


@njit(inline="always")
def _crumb3_pack(tmp, q, base, nsteps):
    _crumb2_pack(tmp, q, base, nsteps)
    _high_bits(tmp, q, base + 16 * nsteps, nsteps, 8, 2, 1)


U8 = WeightCode("u8", 64, 1, _u8_step, _u8_pack)
NIB4 = WeightCode("nib4", 32, 2, _nib4_step, _nib4_pack)
NIB5 = WeightCode("nib5", 40, 8, _nib5_step, _nib5_pack)
NIB6 = WeightCode("nib6", 48, 4, _nib6_step, _nib6_pack)
CRUMB2 = WeightCode("crumb2", 16, 4, _crumb2_step, _crumb2_pack)
CRUMB3 = WeightCode("crumb3", 24, 8, _crumb3_step, _crumb3_pack)


@lru_cache(maxsize=None)
def lut4(table: tuple[int, ...]) -> WeightCode:
    """nib4 codes standing for table[code] (16 values 0..255), looked up in a register."""
    if len(table) != 16 or not all(0 <= v < 256 for v in table):
        raise ValueError(f"a lut4 table has 16 values in 0..255, not {table}")
    lanes = np.tile(np.array(table, np.uint8), 4)    # one copy per 128-bit lane (vpshufb)

    @njit(inline="always")
    def step(q, base, nsteps, s):
        return lookup16(load_bytes64(lanes, 0), _nib4_step(q, base, nsteps, s))

    return WeightCode("lut4", 32, 2, step, _nib4_pack)


_SIMPLE = {c.name: c for c in (U8, NIB4, NIB5, NIB6, CRUMB2, CRUMB3)}


def weight_code(name: str, table: tuple[int, ...] | None = None) -> WeightCode:
    if name == "lut4":
        return lut4(table)
    if name in _SIMPLE:
        return _SIMPLE[name]
    from .grids import GRID_CODES     # imported here: grids.py builds its codes on this module
    return GRID_CODES[name]
