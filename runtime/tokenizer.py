"""Tokenizers built from GGUF metadata alone, giving the token ids llama.cpp gives.

Two vocabulary kinds, as `tokenizer.ggml.model` names them:
- `gpt2`: byte-level BPE. The `tokenizers` library runs the merges; the pre-tokenizer is the list
  of regexes llama.cpp applies for `tokenizer.ggml.pre`, each splitting the pieces of the one
  before ("isolated": matches and the text between them both become pieces).
- `llama`: SentencePiece. The `sentencepiece` library runs a ModelProto built from the GGUF
  tokens, scores and token types.

Special pieces are split out of the text first, as llama.cpp does: user-defined tokens always,
control tokens only when parse_special is asked for (chat templates); each remaining fragment is
tokenized on its own.
"""
from __future__ import annotations

import re
from functools import cached_property
from operator import methodcaller

import numpy as np

from lowbit.quant.errors import LowbitError

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> the regexes llama.cpp splits with, in order
PRE_TOKENIZERS = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt2": [_GPT2],
    "smollm": [r"\p{N}", _GPT2],
    "starcoder": [r"\p{N}", _GPT2],
    "llama-bpe": [_LLAMA3],
    "llama3": [_LLAMA3],
    "qwen2": [_QWEN2],
    "stablelm2": [_QWEN2],
}


class TokenizerError(LowbitError):
    """A tokenizer the GGUF metadata describes that lowbit cannot build."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_TOKEN_IDS = ("bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id", "unknown_token_id",
              "padding_token_id")


def check_metadata(metadata: dict) -> None:
    """The tokenizer keys have the kinds and lengths the tokenizer needs: one sentence if not."""
    def key(name: str) -> str:
        return "tokenizer.ggml." + name

    tokens = metadata.get(key("tokens"))
    if tokens is None or metadata.get(key("model")) is None:
        raise TokenizerError("the model file has no tokenizer (tokenizer.ggml.tokens/model missing)")
    # set(map(type, ...)): the lists hold 150k entries, and a generator would take 0.1 s
    if not isinstance(tokens, list) or not tokens or set(map(type, tokens)) != {str}:
        raise TokenizerError("tokenizer.ggml.tokens is not a list of strings")
    n = len(tokens)
    for name in ("model", "pre"):
        value = metadata.get(key(name))
        if value is not None and not isinstance(value, str):
            raise TokenizerError(f"tokenizer.ggml.{name} is {value!r}, not a name")
    for name, kinds in (("token_type", "iu"), ("scores", "fiu")):
        value = metadata.get(key(name))
        if value is not None and (not isinstance(value, np.ndarray) or value.dtype.kind not in kinds
                                  or len(value) != n):
            raise TokenizerError(f"tokenizer.ggml.{name} does not hold one number per token ({n} tokens)")
    merges = metadata.get(key("merges"))
    if merges is not None and (not isinstance(merges, list) or not set(map(type, merges)) <= {str}):
        raise TokenizerError("tokenizer.ggml.merges is not a list of strings")
    for name in _TOKEN_IDS:
        value = metadata.get(key(name))
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n):
            raise TokenizerError(f"tokenizer.ggml.{name} is {value!r}, not a token id below {n}")


class Tokenizer:
    def __init__(self, metadata: dict):
        check_metadata(metadata)
        self.kind = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        self.tokens: list[str] = list(tokens)
        n = len(self.tokens)
        types = metadata.get("tokenizer.ggml.token_type")
        self.token_types = np.asarray(types if types is not None else np.full(n, NORMAL), dtype=np.int32)
        self.bos_id = metadata.get("tokenizer.ggml.bos_token_id")
        self.eos_id = metadata.get("tokenizer.ggml.eos_token_id")
        self.add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", self.kind == "llama"))
        self.add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
        self.pre = metadata.get("tokenizer.ggml.pre", "default")
        self.end_of_generation = self._end_of_generation_ids(metadata)
        if self.kind == "gpt2":
            self._backend = _BPE(self.tokens, self._ids, metadata.get("tokenizer.ggml.merges", []), self.pre)
        elif self.kind == "llama":
            from .spm import SentencePieceBackend
            self._backend = SentencePieceBackend(metadata, self.tokens, self.token_types)
        else:
            raise TokenizerError(f"tokenizer model {self.kind!r} is not supported (lowbit reads gpt2 and llama)")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _end_of_generation_ids(self, metadata) -> set[int]:
        ids = {metadata.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                           "tokenizer.ggml.eom_token_id")}
        # As llama.cpp does, also stop on the well-known end-of-turn pieces of chat templates.
        for text in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>"):
            if text in self._ids:
                ids.add(self._ids[text])
        return {i for i in ids if i is not None}

    @cached_property
    def _ids(self) -> dict[str, int]:
        return dict(zip(self.tokens, range(len(self.tokens))))

    @cached_property
    def _special_splitters(self):
        def pattern(kinds):
            texts = sorted({self.tokens[i] for i in np.flatnonzero(np.isin(self.token_types, kinds))
                            if self.tokens[i]}, key=len, reverse=True)
            return re.compile("|".join(map(re.escape, texts))) if texts else None
        return {False: pattern([USER_DEFINED]), True: pattern([USER_DEFINED, CONTROL])}

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for `text`, as llama_tokenize(text, add_special, parse_special) gives them."""
        ids: list[int] = []
        if add_special and self.add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        splitter = self._special_splitters[parse_special]
        start = 0
        first_fragment = True
        for m in (splitter.finditer(text) if splitter else ()):
            if m.start() > start:
                ids += self._backend.encode(text[start:m.start()], first_fragment)
            ids.append(self._ids[m.group()])
            first_fragment = False
            start = m.end()
        if start < len(text):
            ids += self._backend.encode(text[start:], first_fragment)
        if add_special and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes a token stands for; control tokens are empty unless `special`."""
        kind = self.token_types[token_id]
        if kind == CONTROL:
            return self.tokens[token_id].encode() if special else b""
        if kind == USER_DEFINED:
            return self.tokens[token_id].encode()
        return self._backend.token_bytes(token_id)

    def decode(self, ids, special: bool = False) -> str:
        data = b"".join(self.token_bytes(int(i), special) for i in ids)
        return self._backend.finish_decode(data.decode("utf-8", errors="replace"), ids)

    def is_end_of_generation(self, token_id: int) -> bool:
        return token_id in self.end_of_generation


class _BPE:
    def __init__(self, tokens: list[str], ids: dict[str, int], merges: list[str], pre: str):
        from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers

        if pre not in PRE_TOKENIZERS:
            raise TokenizerError(f"pre-tokenizer {pre!r} is not supported; lowbit knows "
                                 f"{', '.join(sorted(PRE_TOKENIZERS))}")
        pairs = list(map(tuple, map(methodcaller("split", " ", 1), merges)))   # C loops: 150k merges
        if pairs and min(map(len, pairs)) != 2:
            bad = next(m for m, p in zip(merges, pairs) if len(p) != 2)
            raise TokenizerError(f"the BPE merge {bad!r} in tokenizer.ggml.merges is not two tokens")
        self._hf = HFTokenizer(models.BPE(vocab=ids, merges=pairs, ignore_merges=False))
        splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE_TOKENIZERS[pre]]
        self._hf.pre_tokenizer = pre_tokenizers.Sequence(
            splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._tokens = tokens
        self._byte_of = {c: b for b, c in _bytes_to_unicode().items()}

    def encode(self, text: str, first_fragment: bool) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token_id: int) -> bytes:
        # Worked out per call rather than for the whole vocabulary at load (a second or so for
        # 150k tokens); only generated tokens are ever asked for.
        token, byte_of = self._tokens[token_id], self._byte_of
        if all(c in byte_of for c in token):
            return bytes(byte_of[c] for c in token)
        return token.encode()

    def finish_decode(self, text: str, ids) -> str:
        return text
