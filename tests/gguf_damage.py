"""Damaging GGUF files on purpose: a map of where each field of a file lies, and edits of those
fields, for the fuzz test of the reader and the corpus of damaged real models.

The map is made by a small parser of its own (struct only), so that a bug in lowbit's reader
cannot hide the field it should have refused.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9


@dataclass
class KV:
    key: str
    key_len_at: int          # the u64 length of the key
    type_at: int             # the u32 value type
    value_at: int            # the value (for an array: its u32 item type)
    vtype: int
    item_type: int | None = None
    count_at: int | None = None      # an array's u64 count
    count: int = 0


@dataclass
class TensorField:
    name: str
    name_len_at: int
    n_dims_at: int
    dims_at: list[int]
    dims: list[int]
    type_at: int
    type_id: int
    offset_at: int
    offset: int


@dataclass
class FieldMap:
    version_at: int = 4
    n_tensors_at: int = 8
    n_kv_at: int = 16
    kvs: dict[str, KV] = field(default_factory=dict)
    tensors: dict[str, TensorField] = field(default_factory=dict)
    header_end: int = 0              # where the tensor infos end
    data_at: int = 0                 # the aligned start of the tensor data

    def tensor_data_at(self, name: str) -> int:
        return self.data_at + self.tensors[name].offset


def field_map(data: bytes) -> FieldMap:
    """Where every field of a well-formed GGUF v3 file is."""
    m = FieldMap()
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def string(pos):
        (n,) = struct.unpack_from("<Q", data, pos)
        return data[pos + 8:pos + 8 + n].decode(), pos + 8 + n

    def skip_value(vtype, pos):
        if vtype in SCALAR_SIZES:
            return pos + SCALAR_SIZES[vtype]
        if vtype == STRING:
            return string(pos)[1]
        item, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if item in SCALAR_SIZES:
            return pos + count * SCALAR_SIZES[item]
        for _ in range(count):
            pos = string(pos)[1]
        return pos

    for _ in range(n_kv):
        key_at = pos
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", data, pos)
        kv = KV(key, key_at, pos, pos + 4, vtype)
        if vtype == ARRAY:
            kv.item_type, kv.count = struct.unpack_from("<IQ", data, pos + 4)
            kv.count_at = pos + 8
        m.kvs[key] = kv
        pos = skip_value(vtype, pos + 4)
    for _ in range(n_tensors):
        name_at = pos
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        dims_at = [pos + 4 + 8 * i for i in range(n_dims)]
        dims = list(struct.unpack_from(f"<{n_dims}Q", data, pos + 4))
        pos += 4 + 8 * n_dims
        type_id, offset = struct.unpack_from("<IQ", data, pos)
        m.tensors[name] = TensorField(name, name_at, dims_at[0] - 4, dims_at, dims, pos, type_id, pos + 4, offset)
        pos += 12
    m.header_end = pos
    align_kv = m.kvs.get("general.alignment")
    align = struct.unpack_from("<I", data, align_kv.value_at)[0] if align_kv else 32
    m.data_at = -(-pos // align) * align
    return m


def put(data: bytearray, at: int, fmt: str, value) -> bytearray:
    struct.pack_into(fmt, data, at, value)
    return data


def set_scalar(data: bytearray, m: FieldMap, key: str, value) -> bytearray:
    """Overwrite a scalar metadata value in place, in its own type."""
    kv = m.kvs[key]
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
           12: "<d"}[kv.vtype]
    return put(data, kv.value_at, fmt, value)


def set_f16(data: bytearray, at: int, value: float) -> bytearray:
    data[at:at + 2] = np.array([value], dtype=np.float16).tobytes()
    return data


def flip_bit(data: bytearray, at: int, bit: int) -> bytearray:
    data[at] ^= 1 << bit
    return data
