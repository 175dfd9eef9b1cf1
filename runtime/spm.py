"""SentencePiece vocabularies from GGUF metadata: a ModelProto built in memory for `sentencepiece`.

The proto is serialised by hand (a few fields of sentencepiece_model.proto; the wire format is
varints and length-delimited fields), which spares a protobuf dependency. The model type is BPE:
llama.cpp's SPM tokenizer merges the adjacent pair whose merged piece scores highest, which is
SentencePiece's BPE encoding. Normalisation is off (identity), whitespace is escaped to U+2581,
extra whitespace kept, and a dummy space prefix added only when the file says so.
"""
from __future__ import annotations

import re
import struct

import numpy as np

from .tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, TokenizerError


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int32 fields are sent as 10-byte varints
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


# GGUF token type -> SentencePiece piece type (the same numbering, with unused kept as such).
_PIECE_TYPE = {NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6}


def build_model_proto(tokens, scores, types, unk_id: int, bos_id, eos_id, pad_id,
                      add_space_prefix: bool) -> bytes:
    pieces = bytearray()
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        ptype = 2 if i == unk_id else _PIECE_TYPE.get(int(kind), 1)
        if ptype == 2 and i != unk_id:
            ptype = 3  # exactly one unknown piece
        pieces += _field_bytes(1, _field_bytes(1, piece.encode("utf-8")) + _field_float(2, float(score))
                               + _field_varint(3, ptype))
    trainer = (_field_varint(3, 2)                      # model_type = BPE
               + _field_varint(4, len(tokens))          # vocab_size
               + _field_varint(35, 1)                   # byte_fallback
               + _field_varint(40, unk_id)
               + _field_varint(41, -1 if bos_id is None else bos_id)
               + _field_varint(42, -1 if eos_id is None else eos_id)
               + _field_varint(43, -1 if pad_id is None else pad_id)
               + _field_bytes(45, tokens[unk_id].encode()))
    if bos_id is not None:
        trainer += _field_bytes(46, tokens[bos_id].encode())
    if eos_id is not None:
        trainer += _field_bytes(47, tokens[eos_id].encode())
    if pad_id is not None:
        trainer += _field_bytes(48, tokens[pad_id].encode())
    normalizer = (_field_bytes(1, b"identity") + _field_varint(3, int(add_space_prefix))
                  + _field_varint(4, 0) + _field_varint(5, 1))
    return bytes(pieces) + _field_bytes(2, trainer) + _field_bytes(3, normalizer)


class SentencePieceBackend:
    def __init__(self, metadata: dict, tokens: list[str], token_types: np.ndarray):
        import sentencepiece as spm

        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None:
            scores = np.zeros(len(tokens), dtype=np.float32)
        unk = metadata.get("tokenizer.ggml.unknown_token_id")
        if unk is None:
            found = np.flatnonzero(token_types == UNKNOWN)
            unk = int(found[0]) if len(found) else 0
        self.add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        proto = build_model_proto(tokens, scores, token_types, int(unk),
                                  metadata.get("tokenizer.ggml.bos_token_id"),
                                  metadata.get("tokenizer.ggml.eos_token_id"),
                                  metadata.get("tokenizer.ggml.padding_token_id"),
                                  self.add_space_prefix)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except RuntimeError as e:
            raise TokenizerError(f"the SentencePiece vocabulary could not be built: {e}") from None
        self._bytes = []
        for t, kind in zip(tokens, token_types):
            if kind == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                self._bytes.append(bytes([int(t[3:5], 16)]))
            else:
                self._bytes.append(t.replace("\u2581", " ").encode("utf-8"))

    def encode(self, text: str, first_fragment: bool) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def finish_decode(self, text: str, ids) -> str:
        # The dummy prefix space added when encoding is not part of the text.
        if self.add_space_prefix and text.startswith(" "):
            return text[1:]
        return text
