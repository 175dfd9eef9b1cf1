"""Test helpers: blocks of every type made by an outside quantizer, and tiny GGUF files."""
from __future__ import annotations

from pathlib import Path

import gguf
import libgguf
import numpy as np

from lowbit.quant.types import QuantType


def encode_rows(rows: np.ndarray, qtype: QuantType) -> np.ndarray:
    """Bytes of float rows encoded as `qtype` by the reference encoders (libgguf, gguf-py)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if qtype.name == "F32":
        return rows.view(np.uint8).reshape(rows.shape[0], -1).copy()
    if qtype.is_float:
        return gguf.quants.quantize(rows, gguf.GGMLQuantizationType(qtype.ggml_id)).view(np.uint8)
    imatrix = None
    if libgguf.quantize_requires_imatrix(qtype.ggml_id):
        imatrix = np.abs(np.random.default_rng(7).standard_normal(rows.shape[1])).astype(np.float32) + 0.1
    return np.asarray(libgguf.quantize_rows(rows, qtype.ggml_id, imatrix=imatrix), dtype=np.uint8)


def reference_decode(raw: np.ndarray, qtype: QuantType) -> np.ndarray:
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(qtype.ggml_id))


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, QuantType]],
               metadata: dict | None = None, arch: str = "llama") -> Path:
    """A GGUF file holding `tensors` (name -> (bytes or float array, type)) and metadata."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    for name, (data, qtype) in tensors.items():
        if qtype.name == "F32":
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        else:
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(qtype.ggml_id))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
