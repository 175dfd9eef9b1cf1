"""Quantizing a whole GGUF model: plan the types, encode every tensor, write the new file.

Memory stays bounded whatever the model's size: tensors are read, encoded and written one chunk
of rows at a time (CHUNK_BYTES of float32 at most), the source's mapped pages are dropped from
the resident set once encoded, and the output goes straight to its file.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


from .decode import dequantize
from .encode import all_finite
from .errors import LowbitError
from .gguffile import GGUFFile, release_mapped_pages
from .imatrix import ImportanceMatrix
from .recipes import (NEEDS_IMATRIX, PRESETS_NEEDING_IMATRIX, Choice, ModelShape, PlanOptions, RecipeError,
                      file_type_of, plan, resolve_target)
from .score_gain import quantize_tensor_rows
from .writer import SplitRule, TensorSpec, output_paths, plan_shards, write_gguf

FLOAT_TYPES = ("F32", "F16", "BF16")
CHUNK_BYTES = 16 << 20   # float32 rows decoded and encoded at once


class QuantizeError(LowbitError):
    """A quantization that cannot be done as asked."""


class RequantizeError(QuantizeError):
    """The source is already quantized and requantizing was not allowed."""


class ImatrixNeededError(QuantizeError):
    """A type that needs an importance matrix, asked for without one."""


@dataclass
class QuantizeSummary:
    choices: list[Choice]
    n_params: int
    n_bytes: int
    file_bytes: int = 0
    seconds: float = 0.0
    type_counts: dict[str, int] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)   # the files written, or to be (several if split)

    @property
    def bpw(self) -> float:
        return 8.0 * self.n_bytes / self.n_params if self.n_params else 0.0


def model_shape(src: GGUFFile) -> ModelShape:
    n_head = int(src.arch_key("attention.head_count", 1) or 1)
    n_kv = int(src.arch_key("attention.head_count_kv", n_head) or n_head)
    return ModelShape(n_layer=int(src.arch_key("block_count", 0) or 0),
                      n_gqa=max(1, n_head // max(1, n_kv)),
                      has_output="output.weight" in src.tensors)


def make_plan(src: GGUFFile, opts: PlanOptions) -> list[Choice]:
    tensors = [(n, t.shape) for n, t in src.tensors.items()]
    return plan(tensors, model_shape(src), opts)


def check_imatrix(src: GGUFFile, names: list[str], im: ImportanceMatrix) -> None:
    """The importance matrix must be this model's: its entries for these tensors fit their rows."""
    matched = 0
    for name in names:
        imp = im.importance(name)
        if imp is None:
            continue
        n_cols = src.tensors[name].n_cols
        if imp.size != n_cols:
            raise QuantizeError(f"the importance matrix entry {name} has {imp.size} columns but the "
                                f"tensor has {n_cols}: the importance matrix is for another model")
        matched += 1
    if matched == 0:
        raise QuantizeError("no entry of the importance matrix names a tensor of this model: "
                            "it is for another model")


def check_requantize(src: GGUFFile, names: list[str], allow_requantize: bool) -> None:
    """Quantizing an already quantized tensor again needs --allow-requantize, as in llama.cpp."""
    for name in names:
        t = src.tensors[name]
        if not t.qtype.is_float and not allow_requantize:
            raise RequantizeError(f"{src.path.name} is already quantized ({name} is {t.qtype.name})")


def check_plan(src: GGUFFile, choices: list[Choice], opts: PlanOptions, im: ImportanceMatrix | None,
               allow_requantize: bool) -> None:
    changed = [c for c in choices if c.qtype.name != src.tensors[c.name].qtype.name]
    check_requantize(src, [c.name for c in changed], allow_requantize)
    preset = resolve_target(opts.target)[0].name if opts.recipe is None else None
    if preset in PRESETS_NEEDING_IMATRIX and im is None:
        raise ImatrixNeededError(f"{preset} needs an importance matrix, as in llama.cpp")
    for c in changed:
        if needs_importance(c.name, c.qtype.name, preset) and (im is None or im.importance(c.name) is None):
            raise ImatrixNeededError(f"{c.qtype.name} (for {c.name}) needs an importance matrix, as in "
                                     f"llama.cpp")
    for c in changed:
        if c.qtype.encode_row is None and c.qtype.name != "F32":
            raise QuantizeError(f"lowbit cannot encode {c.qtype.name} yet (needed for {c.name})")


def needs_importance(name: str, qtype_name: str, preset: str | None = None) -> bool:
    """Whether llama.cpp refuses to make this tensor in this type (under this preset) without an
    importance matrix entry for it."""
    return ((qtype_name in NEEDS_IMATRIX and not (qtype_name == "IQ1_M" and _is_embd_or_output(name)))
            or (preset == "Q2_K_S" and qtype_name == "Q2_K" and name != "token_embd.weight"))


def _is_embd_or_output(name: str) -> bool:
    return name in ("token_embd.weight", "output.weight")


class RowBuffer:
    """The float32 rows one chunk is decoded into, kept from chunk to chunk and tensor to tensor:
    a fresh 16 MiB array per chunk costs the kernel a page fault and a zeroed page per 4 KiB.
    (The writer takes each chunk before the next is decoded, so F32 rows may be yielded as they
    are.)"""

    def __init__(self):
        self._flat = np.empty(0, np.float32)

    def rows(self, n_rows: int, n_cols: int) -> np.ndarray:
        if self._flat.size < n_rows * n_cols:
            self._flat = np.empty(n_rows * n_cols, np.float32)
        return self._flat[:n_rows * n_cols].reshape(n_rows, n_cols)


def _produce(src: GGUFFile, choice: Choice, im: ImportanceMatrix | None, progress, encoded: Path | None,
             buffer: RowBuffer):
    """The tensor's bytes, a chunk of rows at a time: copied, encoded here, or (`encoded`) read
    from a .npy file of bytes an earlier pass made (eval/layer_pass.py)."""
    t = src.tensors[choice.name]

    def from_file():
        raw = np.load(encoded, mmap_mode="r")
        if raw.shape != (t.n_rows, choice.qtype.row_bytes(t.n_cols)):
            raise QuantizeError(f"the encoded {choice.name} in {encoded} does not fit its tensor")
        step = max(1, CHUNK_BYTES // max(1, raw.shape[1]))
        for start in range(0, t.n_rows, step):
            yield np.ascontiguousarray(raw[start:start + step])
            if progress:
                progress(min(step, t.n_rows - start) * t.n_cols)

    def produce():
        raw = src.raw(choice.name).reshape(t.n_rows, -1)
        copy = choice.qtype.name == t.qtype.name
        imp = im.importance(choice.name) if im is not None and not copy else None
        step = max(1, CHUNK_BYTES // (4 * max(1, t.n_cols)))
        for start in range(0, t.n_rows, step):
            part = raw[start:start + step]
            if copy:
                yield part
            else:
                rows = dequantize(part, t.qtype, (part.shape[0], t.n_cols), out=buffer.rows(part.shape[0], t.n_cols))
                # the encoders refuse non-finite weights themselves; F32 rows are not encoded
                if choice.qtype.name == "F32" and not all_finite(rows):
                    raise QuantizeError(f"{src.path.name}: tensor {choice.name} holds NaN or infinite weights")
                try:
                    out = rows if choice.qtype.name == "F32" else quantize_tensor_rows(choice.name, rows, choice.qtype, imp)
                except ValueError as e:   # weights or importance unfit for encoding
                    raise QuantizeError(f"{src.path.name}: tensor {choice.name}: {e}") from None
                yield out
            release_mapped_pages(part)   # written: its pages of the source may go
            if progress:
                progress(part.shape[0] * t.n_cols)
        release_mapped_pages(raw)
    return produce if encoded is None else from_file


def file_type(opts: PlanOptions, specs: list[TensorSpec]) -> int:
    """general.file_type: the preset's; for a recipe, that of the type holding the most bytes."""
    if opts.recipe is None:
        return resolve_target(opts.target)[0].file_type
    held = {}
    for spec in specs:
        held[spec.qtype.name] = held.get(spec.qtype.name, 0) + spec.n_bytes
    quantized = {t: n for t, n in held.items() if t != "F32"} or held
    return file_type_of(max(quantized, key=quantized.get))


def quantize_model(src: GGUFFile, out_path: str | Path, opts: PlanOptions,
                   im: ImportanceMatrix | None = None, allow_requantize: bool = False,
                   dry_run: bool = False, imatrix_path: str | None = None,
                   progress: Callable[[int], None] | None = None, split: SplitRule | None = None,
                   encoded: dict[str, Path] | None = None) -> QuantizeSummary:
    """Plan, check and write the quantized model. encoded: tensors already encoded (name ->
    .npy file of their bytes in the planned type), taken as they are."""
    start = time.perf_counter()
    out_path = Path(out_path)
    opts.has_imatrix = im is not None
    try:
        choices = make_plan(src, opts)
    except RecipeError as e:
        raise QuantizeError(str(e)) from None
    if im is not None:
        check_imatrix(src, [c.name for c in choices], im)
    check_plan(src, choices, opts, im, allow_requantize)
    summary = QuantizeSummary(choices, sum(src.tensors[c.name].n_elements for c in choices), 0)
    specs = []
    buffer = RowBuffer()   # the tensors are written one after the other: one buffer serves all
    for c in choices:
        t = src.tensors[c.name]
        spec = TensorSpec(c.name, t.shape, c.qtype, _produce(src, c, im, progress, (encoded or {}).get(c.name), buffer))
        specs.append(spec)
        summary.n_bytes += spec.n_bytes
        summary.type_counts[c.qtype.name] = summary.type_counts.get(c.qtype.name, 0) + 1
    alignment = int(src.metadata.get("general.alignment", 32))
    summary.paths = output_paths(out_path, len(plan_shards(specs, split, alignment)) if split else None)
    if dry_run:
        summary.seconds = time.perf_counter() - start
        return summary
    if not out_path.parent.exists():
        raise QuantizeError(f"the output directory {out_path.parent} does not exist")
    inputs = {p.resolve() for p in src.shards}
    if any(p.resolve() in inputs for p in summary.paths):
        raise QuantizeError("the output would overwrite the input")
    metadata = {k: v for k, v in src.metadata.items() if not k.startswith("quantize.imatrix.")}
    types = dict(src.metadata_types)
    metadata["general.file_type"] = file_type(opts, specs)
    types["general.file_type"] = (4, None)
    metadata["general.quantization_version"] = 2
    types["general.quantization_version"] = (4, None)
    if im is not None:
        metadata["quantize.imatrix.file"] = str(imatrix_path or "")
        metadata["quantize.imatrix.dataset"] = im.datasets[0] if im.datasets else ""
        metadata["quantize.imatrix.entries_count"] = len(im)
        metadata["quantize.imatrix.chunks_count"] = im.chunk_count
        types.update({"quantize.imatrix.file": (8, None), "quantize.imatrix.dataset": (8, None),
                      "quantize.imatrix.entries_count": (5, None), "quantize.imatrix.chunks_count": (5, None)})
    summary.paths = write_gguf(out_path, metadata, types, specs, alignment=alignment, split=split)
    summary.file_bytes = sum(p.stat().st_size for p in summary.paths)
    summary.seconds = time.perf_counter() - start
    return summary
