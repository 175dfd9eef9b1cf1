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


def ggml_decode(raw: np.ndarray, qtype: QuantType, n_cols: int) -> np.ndarray:
    """Rows of `qtype` decoded by ggml's own C dequantizers (libgguf): an oracle whose tables are
    not the gguf package's, which lowbit reads its tables from. The float types, which libgguf
    does not take, are widened by numpy."""
    rows = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, qtype.row_bytes(n_cols))
    if qtype.name == "F32":
        return rows.view(np.float32).copy()
    if qtype.name == "F16":
        return rows.view(np.float16).astype(np.float32)
    if qtype.name == "BF16":
        return (rows.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(libgguf.dequantize_rows(rows, qtype.ggml_id, n_cols), dtype=np.float32)


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
            data = data.view(np.float32) if data.dtype == np.uint8 else data
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        else:
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(qtype.ggml_id))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------------------------------------
# Tiny models: random weights, a small byte-level BPE vocabulary built here.

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "Ġ w", "a n", "Ġ o", "r e",
          "Ġa n", "e d", "Ġ i", "o r", "Ġo f", "Ġ in", "Ġ c", "a t"]


def gpt2_byte_chars() -> list[str]:
    """The printable character GPT-2's byte-level BPE uses for each byte (independently built)."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    tokens = list(SPECIALS) + gpt2_byte_chars()
    for m in MERGES:
        tokens.append(m.replace(" ", ""))
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, list(MERGES)


ARCH_EXTRAS = {
    "llama": dict(),
    "qwen2": dict(biases=True),
    "qwen3": dict(qk_norm=True, head_dim=64),
    "gemma3": dict(qk_norm=True, post_norms=True, head_dim=64, sliding_window=6),
}


def build_model(path: Path, arch: str = "llama", weight_type: str = "Q4_K", *, n_layer: int = 2,
                n_embd: int = 256, n_ff: int = 512, n_head: int = 4, n_head_kv: int = 2,
                tied: bool = True, embd_type: str = "Q8_0", seed: int = 0,
                type_overrides: dict[str, str] | None = None, add_bos: bool = False,
                rope_base: float = 10000.0) -> Path:
    """A random model of `arch` whose linear weights are `weight_type` (or per-name overrides)."""
    from lowbit.quant.types import by_name

    extras = ARCH_EXTRAS[arch]
    rng = np.random.default_rng(seed)
    head_dim = extras.get("head_dim", n_embd // n_head)
    tokens, types, merges = tiny_vocab()
    n_vocab = len(tokens)
    f32 = by_name("F32")
    tensors: dict[str, tuple[np.ndarray, object]] = {}

    def quantized(name, rows, cols, tname):
        qt = by_name((type_overrides or {}).get(name, tname))
        w = rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(cols)
        tensors[name] = (encode_rows(w, qt), qt)

    def norm(name, n):
        tensors[name] = ((1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32), f32)

    quantized("token_embd.weight", n_vocab, n_embd, embd_type)
    for i in range(n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", n_embd)
        norm(p + "ffn_norm.weight", n_embd)
        quantized(p + "attn_q.weight", n_head * head_dim, n_embd, weight_type)
        quantized(p + "attn_k.weight", n_head_kv * head_dim, n_embd, weight_type)
        quantized(p + "attn_v.weight", n_head_kv * head_dim, n_embd, weight_type)
        quantized(p + "attn_output.weight", n_embd, n_head * head_dim, weight_type)
        quantized(p + "ffn_gate.weight", n_ff, n_embd, weight_type)
        quantized(p + "ffn_up.weight", n_ff, n_embd, weight_type)
        quantized(p + "ffn_down.weight", n_embd, n_ff, weight_type)
        if extras.get("biases"):
            for t, n in (("q", n_head * head_dim), ("k", n_head_kv * head_dim), ("v", n_head_kv * head_dim)):
                tensors[p + f"attn_{t}.bias"] = ((0.1 * rng.standard_normal(n)).astype(np.float32), f32)
        if extras.get("qk_norm"):
            norm(p + "attn_q_norm.weight", head_dim)
            norm(p + "attn_k_norm.weight", head_dim)
        if extras.get("post_norms"):
            norm(p + "post_attention_norm.weight", n_embd)
            norm(p + "post_ffw_norm.weight", n_embd)
    norm("output_norm.weight", n_embd)
    if not tied:
        quantized("output.weight", n_vocab, n_embd, weight_type)

    meta = {
        f"{arch}.block_count": n_layer, f"{arch}.context_length": 256,
        f"{arch}.embedding_length": n_embd, f"{arch}.feed_forward_length": n_ff,
        f"{arch}.attention.head_count": n_head, f"{arch}.attention.head_count_kv": n_head_kv,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5, f"{arch}.rope.freq_base": rope_base,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.add_bos_token": add_bos,
        "tokenizer.chat_template": CHATML,
    }
    if "head_dim" in extras:
        meta[f"{arch}.attention.key_length"] = head_dim
        meta[f"{arch}.attention.value_length"] = head_dim
    if "sliding_window" in extras:
        meta[f"{arch}.attention.sliding_window"] = extras["sliding_window"]
    return write_gguf(path, tensors, meta, arch=arch)
