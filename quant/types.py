"""The type registry: every GGML tensor type lowbit knows, listed once.

Each format module registers its types here with the facts of the layout and a block decoder.
Everything generic (dequantize, fused kernels, sizes, tests, CLI listings) loops over this table,
so a new type inherits all of it by being registered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType


@dataclass(frozen=True)
class Packing:
    """How the runtime's integer kernels hold a type (runtime/kernels/layouts.py has the
    encodings and the recipe for adding one). Per sub-block of `sub` weights of a row the
    weights are  w = scale * value(u) - min,  u the small unsigned code `unpack` yields per weight.

    unpack(w, o, u, rec, y): njit; the block at byte o of the row w -> u (uint8[block_size])
        and rec (uint8[sum of the scale encoding's field widths]), the block's scale fields in
        the encoding's order (f16 fields as the file's two bytes, codes as one byte each, or
        two to a byte for the f16_nib_* encodings);
        y is float32[block_size] scratch for unpackers that go through the exact decoder.
    weights: the weight encoding that stores u (its bits per weight) and turns it into bytes
        for vpdpbusd: "u8", "nib4", "nib5", "nib6", "crumb2", "crumb3", "lut4" (value = table[u]),
        or a grid type's own ("iq2_xxs", ...: grid indices and sign bits, runtime/kernels/grids.py).
    scales: the scale encoding of rec: "f16", "f16_min", "e8m0", "f16_i8", "f16_u8_min",
        "f16_nib_min", "f16_nib_quarter", "f16_nib_half", "f16_nib_odd".
    offset: OFF of a symmetric type (min = OFF * scale: value = q + OFF); -1: affine, min stored.
    table: for "lut4", the 16 values (0..255) that the codes 0..15 stand for.
    """
    weights: str
    scales: str
    sub: int
    offset: int
    unpack: Callable
    table: tuple[int, ...] | None = None

    @property
    def affine(self) -> bool:
        return self.offset < 0


@dataclass(frozen=True)
class QuantType:
    name: str
    ggml_id: int
    block_size: int          # weights per block
    type_size: int           # bytes per block
    family: str              # "float", "legacy", "k", "iq1", "iq2", "iq3", "iq4", "ternary", "mx"
    # decode_block(w, o, y): njit; decodes the block(s) at byte offset o of the uint8 array w into
    # the float32 array y. Quantized types decode exactly one block (len(y) == block_size); the
    # float types (block_size 1) decode len(y) consecutive values.
    decode_block: Callable
    # encode_row(x, imp, out): njit; encodes one row x (float32[n_cols]) into out (uint8[row_bytes]).
    # imp is the per-column importance (float32[n_cols], mean squared activations from an
    # importance matrix) or an empty array when there is none. None: lowbit cannot encode it yet.
    encode_row: Callable | None = None
    # How the integer kernels hold it (None: the float kernels run it).
    packing: Packing | None = None

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def is_float(self) -> bool:
        return self.family == "float"

    def row_bytes(self, n_cols: int) -> int:
        """Bytes of one row of n_cols weights; raises ValueError if n_cols is not whole blocks."""
        if n_cols % self.block_size:
            raise ValueError(
                f"a row of {n_cols} weights is not a whole number of {self.name} blocks "
                f"({self.block_size} weights each)")
        return n_cols // self.block_size * self.type_size

    def decode_chunk(self, n_cols: int) -> int:
        """How many weights the kernels decode at a time along a row of n_cols."""
        return n_cols if self.is_float else self.block_size


_BY_NAME: dict[str, QuantType] = {}
_BY_ID: dict[int, QuantType] = {}


def register(name: str, family: str, decode_block: Callable, encode_row: Callable | None = None,
             packing: Packing | None = None) -> QuantType:
    """Register a type; block and type sizes come from the gguf package, the format's authority."""
    ggml = GGMLQuantizationType[name]
    block_size, type_size = GGML_QUANT_SIZES[ggml]
    if packing is not None and block_size % packing.sub:
        raise ValueError(f"{name}: sub-blocks of {packing.sub} do not divide blocks of {block_size}")
    qtype = QuantType(name, int(ggml), block_size, type_size, family, decode_block, encode_row, packing)
    assert name not in _BY_NAME and qtype.ggml_id not in _BY_ID, name
    _BY_NAME[name] = qtype
    _BY_ID[qtype.ggml_id] = qtype
    return qtype


def _load_formats() -> None:
    # Importing a format module registers its types.
    from .formats import floats, legacy, kquants, iq1, iq2, iq3, iq4, ternary, mxfp4  # noqa: F401


def all_types() -> list[QuantType]:
    _load_formats()
    return sorted(_BY_NAME.values(), key=lambda t: t.ggml_id)


def by_name(name: str) -> QuantType:
    _load_formats()
    try:
        return _BY_NAME[name.upper()]
    except KeyError:
        raise ValueError(f"unknown tensor type {name!r}; known types: "
                         f"{', '.join(t.name for t in all_types())}") from None


def by_id(ggml_id: int) -> QuantType:
    _load_formats()
    try:
        return _BY_ID[ggml_id]
    except KeyError:
        try:
            what = GGMLQuantizationType(ggml_id).name
        except ValueError:
            what = f"id {ggml_id}"
        raise ValueError(f"tensor type {what} is not supported by lowbit") from None
