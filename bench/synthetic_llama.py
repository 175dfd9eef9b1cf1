"""A synthetic llama GGUF of a chosen size, for scale measurements (random weights say nothing
about quality).

TinyLlama-1.1B's shapes (2048 wide, FFN 5632, 32 query and 4 key/value heads, a 32,000-token
SentencePiece-style vocabulary, an untied output matrix) with as many layers as the size asks:
each layer holds 44.0 M parameters, the embedding and output 131 M, so 0.5B is 8 layers, 1B 20,
3B 65. Matrices are F16 (or BF16 / F32), N(0, 1/n_cols); norms are F32 ones. The file is written
tensor by tensor with gguf-py (memory stays small whatever the size), as OUT.tmp, renamed when
complete.

    python bench/synthetic_llama.py OUT.gguf --params 1B
    python bench/synthetic_llama.py OUT.gguf --layers 4 --type BF16
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LlamaShape:
    n_layer: int
    n_embd: int = 2048
    n_ff: int = 5632
    n_head: int = 32
    n_head_kv: int = 4
    n_vocab: int = 32000

    def matrices(self) -> list[tuple[str, int, int]]:
        """(name, rows, columns) of every matrix, in llama.cpp's file order."""
        kv = self.n_embd // self.n_head * self.n_head_kv
        out = [("token_embd.weight", self.n_vocab, self.n_embd)]
        for i in range(self.n_layer):
            p = f"blk.{i}."
            out += [(p + "attn_q.weight", self.n_embd, self.n_embd), (p + "attn_k.weight", kv, self.n_embd),
                    (p + "attn_v.weight", kv, self.n_embd), (p + "attn_output.weight", self.n_embd, self.n_embd),
                    (p + "ffn_gate.weight", self.n_ff, self.n_embd), (p + "ffn_up.weight", self.n_ff, self.n_embd),
                    (p + "ffn_down.weight", self.n_embd, self.n_ff)]
        return out + [("output.weight", self.n_vocab, self.n_embd)]

    def norms(self) -> list[str]:
        return [f"blk.{i}.{k}_norm.weight" for i in range(self.n_layer) for k in ("attn", "ffn")] + ["output_norm.weight"]

    @property
    def n_params(self) -> int:
        return sum(r * c for _, r, c in self.matrices()) + self.n_embd * len(self.norms())


def layers_for(n_params: float) -> int:
    """The layer count whose model comes nearest n_params."""
    base, one = LlamaShape(0).n_params, LlamaShape(1).n_params - LlamaShape(0).n_params
    return max(1, round((n_params - base) / one))


def parse_count(text: str) -> float:
    """500M, 1B, 2.5B -> a parameter count."""
    units = {"M": 1e6, "B": 1e9, "G": 1e9}
    t = text.strip().upper()
    try:
        return float(t[:-1]) * units[t[-1]] if t[-1:] in units else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a parameter count such as 500M or 1B") from None


def write(out: str | os.PathLike, shape: LlamaShape, type_name: str = "F16", seed: int = 0,
          chunk_rows: int = 4096) -> Path:
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    if qtype not in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32):
        raise ValueError(f"matrices are F16, BF16 or F32, not {type_name}")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"synthetic llama {shape.n_params / 1e9:.2f}B")
    w.add_file_type(int(gguf.LlamaFileType["ALL_F32" if type_name == "F32" else "MOSTLY_" + type_name]))
    w.add_context_length(2048)
    w.add_embedding_length(shape.n_embd)
    w.add_feed_forward_length(shape.n_ff)
    w.add_block_count(shape.n_layer)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(shape.n_embd // shape.n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    # <unk>, <s>, </s>, the 256 byte pieces, then filler pieces (llama.cpp's token types 2, 3, 6, 1)
    head = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    n_fill = shape.n_vocab - len(head)
    w.add_tokenizer_model("llama")
    w.add_token_list(head + [f"\u2581t{i}" for i in range(n_fill)])
    w.add_token_scores([0.0] * len(head) + [-float(i) for i in range(n_fill)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * n_fill)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    width = 2 if type_name != "F32" else 4
    np_dtype = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32}[type_name]
    order = sorted([(n, (r, c)) for n, r, c in shape.matrices()] + [(n, (shape.n_embd,)) for n in shape.norms()],
                   key=lambda t: _file_order(t[0]))
    for name, dims in order:
        if len(dims) == 1:
            w.add_tensor_info(name, dims, np.dtype(np.float32), 4 * dims[0])
        else:
            w.add_tensor_info(name, dims, np.dtype(np_dtype), width * dims[0] * dims[1], raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, dims in order:
        if len(dims) == 1:
            w.write_tensor_data(np.ones(dims, np.float32))
            continue
        rows, cols = dims
        scale = np.float32(1 / np.sqrt(cols))
        parts = []
        for r0 in range(0, rows, chunk_rows):
            x = rng.standard_normal((min(chunk_rows, rows - r0), cols), dtype=np.float32) * scale
            parts.append(_encode(x, type_name))
        # one tensor at a time: gguf-py writes each array as it is given (and pads it)
        w.write_tensor_data(np.concatenate(parts) if len(parts) > 1 else parts[0])
    w.close()
    os.replace(tmp, out)
    return out


def _encode(x: np.ndarray, type_name: str) -> np.ndarray:
    if type_name == "F32":
        return x
    if type_name == "F16":
        return x.astype(np.float16)
    return (x.view(np.uint32) >> 16).astype(np.uint16)   # BF16 by truncation: random weights anyway


def _file_order(name: str) -> tuple:
    if name.startswith("blk."):
        return (1, int(name.split(".")[1]))
    return (0 if name == "token_embd.weight" else 2, 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--params", help="the size: 500M, 1B, 3B (the nearest layer count)")
    size.add_argument("--layers", type=int)
    p.add_argument("--type", default="F16", choices=["F16", "BF16", "F32"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        n_layer = args.layers if args.layers is not None else layers_for(parse_count(args.params))
        if n_layer < 1:
            raise ValueError(f"--layers must be at least 1, not {n_layer}")
        shape = LlamaShape(n_layer)
        write(args.out, shape, args.type, args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {n_layer} layers, {shape.n_params / 1e9:.3f} B parameters, "
          f"{args.out.stat().st_size / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
