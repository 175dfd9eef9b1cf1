"""Write a synthetic GGUF model at a real shape: random weights, a SentencePiece-style vocabulary
that llama.cpp's tools and lowbit both load, any tensor type gguf-py can encode.

For speed and scale measurements (random weights say nothing about quality):

    python bench/make_synthetic.py OUT.gguf --shape qwen2.5-1.5b --type F16
    python bench/make_synthetic.py OUT.gguf --shape tinyllama-1.1b --type BF16
    python bench/make_synthetic.py OUT.gguf --shape qwen2.5-1.5b --n-layer 4 --type Q8_0

A shape preset sets the architecture, sizes and vocabulary; every size can be overridden
(--n-embd, --n-ff, --n-layer, --n-head, --n-head-kv, --n-vocab, --tied / --untied). Weights are
N(0, 1/n_cols) (rows of unit-norm inputs give unit-scale outputs, so a forward pass stays far
from float16's range), norms are 1, qwen2's q/k/v biases are small. --type applies to every
matrix, the token embedding included (as a converted F16/BF16/F32 source has it); norms and
biases are F32. The file is written to OUT.tmp and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Shape:
    arch: str            # llama or qwen2 (qwen2: biases on q, k, v)
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    tied: bool           # the output matrix is the token embedding
    rope_base: float = 10000.0
    n_ctx: int = 4096    # the context length the metadata declares

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def matrices(self) -> list[tuple[str, int, int]]:
        """(name, rows, columns) of every weight matrix, in file order."""
        q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        out = [("token_embd.weight", self.n_vocab, self.n_embd)]
        for i in range(self.n_layer):
            p = f"blk.{i}."
            out += [(p + "attn_q.weight", q, self.n_embd), (p + "attn_k.weight", kv, self.n_embd),
                    (p + "attn_v.weight", kv, self.n_embd), (p + "attn_output.weight", self.n_embd, q),
                    (p + "ffn_gate.weight", self.n_ff, self.n_embd), (p + "ffn_up.weight", self.n_ff, self.n_embd),
                    (p + "ffn_down.weight", self.n_embd, self.n_ff)]
        if not self.tied:
            out.append(("output.weight", self.n_vocab, self.n_embd))
        return out

    def vectors(self) -> list[tuple[str, int]]:
        """(name, length) of the float32 norms and biases."""
        kv = self.n_head_kv * self.head_dim
        out = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            out += [(p + "attn_norm.weight", self.n_embd), (p + "ffn_norm.weight", self.n_embd)]
            if self.arch == "qwen2":
                out += [(p + "attn_q.bias", self.n_embd), (p + "attn_k.bias", kv), (p + "attn_v.bias", kv)]
        return out + [("output_norm.weight", self.n_embd)]

    def n_params(self) -> int:
        return sum(r * c for _, r, c in self.matrices()) + sum(n for _, n in self.vectors())


SHAPES = {
    # Qwen2.5-1.5B (and -Coder): 28 layers, 1536 wide, FFN 8960, 12/2 heads, tied 151,936 vocab
    "qwen2.5-1.5b": Shape("qwen2", 1536, 8960, 28, 12, 2, 151936, tied=True, rope_base=1e6),
    # TinyLlama-1.1B: 22 layers, 2048 wide, FFN 5632, 32/4 heads, 32,000 vocab, untied
    "tinyllama-1.1b": Shape("llama", 2048, 5632, 22, 32, 4, 32000, tied=False),
    # SmolLM2-135M: 30 layers, 576 wide, FFN 1536, 9/3 heads, tied 49,152 vocab
    "smollm2-135m": Shape("llama", 576, 1536, 30, 9, 3, 49152, tied=True, rope_base=1e5),
}

# A SentencePiece ("llama") vocabulary: <unk>, <s>, </s>, the 256 byte pieces, then filler
# pieces. llama.cpp's token types:
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    head = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    if n_vocab < len(head) + 1:
        raise ValueError(f"the vocabulary needs at least {len(head) + 1} tokens, not {n_vocab}")
    pieces = head + [f"\u2581t{i}" for i in range(n_vocab - len(head))]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * (n_vocab - len(head))
    scores = [0.0] * len(head) + [-float(i) for i in range(n_vocab - len(head))]
    return pieces, scores, types


def file_type(qtype) -> int | None:
    """llama.cpp's general.file_type for a model whose matrices are all `qtype`, if one exists."""
    import gguf
    name = {"F32": "ALL_F32"}.get(qtype.name, "MOSTLY_" + qtype.name)
    return int(gguf.LlamaFileType[name]) if name in gguf.LlamaFileType.__members__ else None


def encode(rows: np.ndarray, qtype) -> np.ndarray:
    """float32 rows as the bytes (or F32/F16 values) of qtype, via gguf-py's encoders."""
    import gguf
    if qtype == gguf.GGMLQuantizationType.F32:
        return rows
    if qtype == gguf.GGMLQuantizationType.F16:
        return rows.astype(np.float16)
    return gguf.quants.quantize(rows, qtype)


def random_matrix(rng: np.random.Generator, n_rows: int, n_cols: int, qtype, chunk_rows: int = 8192) -> np.ndarray:
    """N(0, 1/n_cols) weights encoded as qtype, made chunk by chunk (a float32 copy of a large
    embedding never exists at once)."""
    scale = np.float32(1.0 / np.sqrt(n_cols))
    parts = []
    for r0 in range(0, n_rows, chunk_rows):
        rows = rng.standard_normal((min(chunk_rows, n_rows - r0), n_cols), dtype=np.float32)
        rows *= scale
        parts.append(encode(rows, qtype))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def write_model(out: Path, shape: Shape, type_name: str, seed: int = 0, log=print) -> Path:
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType[type_name.upper()]
    except KeyError:
        raise ValueError(f"unknown tensor type {type_name!r}") from None
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    for name, _, cols in shape.matrices():
        if cols % block:
            raise ValueError(f"{name} has rows of {cols}, not whole {qtype.name} blocks of {block}")
    if shape.n_embd % shape.n_head or shape.n_head % shape.n_head_kv:
        raise ValueError("n_embd must be a multiple of n_head, and n_head of n_head_kv")

    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), shape.arch)
    a = shape.arch
    w.add_name(f"synthetic {a} {shape.n_params() / 1e9:.2f}B {qtype.name}")
    ftype = file_type(qtype)
    if ftype is not None:
        w.add_file_type(ftype)
    w.add_uint32(f"{a}.context_length", shape.n_ctx)
    w.add_uint32(f"{a}.embedding_length", shape.n_embd)
    w.add_uint32(f"{a}.feed_forward_length", shape.n_ff)
    w.add_uint32(f"{a}.block_count", shape.n_layer)
    w.add_uint32(f"{a}.attention.head_count", shape.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", shape.n_head_kv)
    w.add_uint32(f"{a}.rope.dimension_count", shape.head_dim)
    w.add_float32(f"{a}.rope.freq_base", shape.rope_base)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    pieces, scores, types = vocabulary(shape.n_vocab)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", pieces)
    w.add_array("tokenizer.ggml.scores", scores)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", True)

    # Every tensor's description first (the header holds them all), then the data in that order.
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    f32 = gguf.GGMLQuantizationType.F32
    plan = [(name, (rows, cols), qtype) for name, rows, cols in shape.matrices()]
    plan += [(name, (n,), f32) for name, n in shape.vectors()]
    plan.sort(key=lambda p: _file_order(p[0]))
    for name, dims, t in plan:
        if t == f32:
            w.add_tensor_info(name, dims, np.dtype(np.float32), int(np.prod(dims)) * 4)
        else:
            nbytes = dims[0] * dims[1] // block * type_size
            w.add_tensor_info(name, (dims[0], dims[1] // block * type_size), np.dtype(np.uint8), nbytes,
                              raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i, (name, dims, t) in enumerate(plan):
        if t == f32:
            data = (np.ones(dims, np.float32) if name.endswith("norm.weight")
                    else (0.02 * rng.standard_normal(dims)).astype(np.float32))
        else:
            data = random_matrix(rng, dims[0], dims[1], t)
        w.write_tensor_data(data)
        if log and (i + 1) % 25 == 0:
            log(f"  {i + 1}/{len(plan)} tensors, {time.perf_counter() - start:.0f} s")
    w.close()
    os.replace(tmp, out)
    return out


def _file_order(name: str) -> tuple:
    """token_embd, then layer by layer, then output_norm and output (llama.cpp's own order)."""
    if name.startswith("blk."):
        return (1, int(name.split(".")[1]), name)
    return (0 if name.startswith("token_embd") else 2, 0, name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("out", type=Path, help="the GGUF file to write")
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b", help="size preset (default qwen2.5-1.5b)")
    p.add_argument("--type", default="F16", help="type of every matrix (F16, BF16, F32 or any type gguf-py encodes)")
    p.add_argument("--arch", choices=["llama", "qwen2"])
    for f in fields(Shape):
        if f.type == "int":
            p.add_argument("--" + f.name.replace("_", "-"), type=int, dest=f.name)
    p.add_argument("--tied", action="store_true", default=None, help="the output matrix is the token embedding")
    p.add_argument("--untied", action="store_false", dest="tied", help="a separate output matrix")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    overrides = {f.name: getattr(args, f.name) for f in fields(Shape)
                 if getattr(args, f.name, None) is not None}
    shape = replace(shape, **overrides)
    if min(shape.n_embd, shape.n_ff, shape.n_layer, shape.n_head, shape.n_head_kv) < 1:
        p.error("every size must be at least 1")
    print(f"{args.out}: {shape}, {shape.n_params() / 1e9:.3f} B parameters, {args.type}")
    try:
        write_model(args.out, shape, args.type, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
