"""Which type each tensor gets: llama.cpp's presets and rules, fallbacks, and user overrides.

The rules follow llama.cpp's llama_tensor_get_type for dense models (docs/recipes.md tabulates
them): the output matrix and token embedding, attn_v, ffn_down and attn_output get more bits by
preset and layer position; types whose 256-weight blocks do not fit a row fall back to a 32-block
type. Overrides (--tensor-type REGEX=TYPE) are searched in the tensor name in the order given and
the first that matches wins, as in llama-quantize.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from gguf import LlamaFileType

from .errors import LowbitError
from .types import QuantType, UnsupportedTypeError, by_name


@dataclass(frozen=True)
class Preset:
    name: str
    file_type: int      # general.file_type (llama_ftype)
    default: str        # the type most tensors get


def _preset(name, default, ftype_name=None):
    return Preset(name, int(LlamaFileType[f"MOSTLY_{ftype_name or name}"]), default)


PRESETS = {p.name: p for p in [
    _preset("Q4_0", "Q4_0"), _preset("Q4_1", "Q4_1"), _preset("Q5_0", "Q5_0"), _preset("Q5_1", "Q5_1"),
    _preset("Q8_0", "Q8_0"), _preset("F16", "F16"), _preset("BF16", "BF16"),
    _preset("Q2_K", "Q2_K"), _preset("Q2_K_S", "Q2_K"),
    _preset("Q3_K_S", "Q3_K"), _preset("Q3_K_M", "Q3_K"), _preset("Q3_K_L", "Q3_K"),
    _preset("Q4_K_S", "Q4_K"), _preset("Q4_K_M", "Q4_K"),
    _preset("Q5_K_S", "Q5_K"), _preset("Q5_K_M", "Q5_K"), _preset("Q6_K", "Q6_K"),
    _preset("IQ1_S", "IQ1_S"), _preset("IQ1_M", "IQ1_M"),
    _preset("IQ2_XXS", "IQ2_XXS"), _preset("IQ2_XS", "IQ2_XS"), _preset("IQ2_S", "IQ2_XS"),
    _preset("IQ2_M", "IQ2_S"), _preset("IQ3_XXS", "IQ3_XXS"), _preset("IQ3_XS", "IQ3_S"),
    _preset("IQ3_S", "IQ3_S"), _preset("IQ3_M", "IQ3_S"), _preset("IQ4_NL", "IQ4_NL"),
    _preset("IQ4_XS", "IQ4_XS"), _preset("TQ1_0", "TQ1_0"), _preset("TQ2_0", "TQ2_0"),
]}
PRESETS["F32"] = Preset("F32", int(LlamaFileType.ALL_F32), "F32")

# What llama.cpp refuses without an importance matrix (checked against llama-cpp-python 0.3.36):
# a tensor of these types (IQ1_M only outside the embedding and output), and these presets
# whatever their tensors end up as (llama-quantize's own check).
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"}
PRESETS_NEEDING_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"}

# A 256-block type whose blocks do not divide the row falls back to a 32-block type (as
# llama.cpp does today: Q2_K and Q3_K take Q4_0, the i-quants IQ4_NL; bench/llamacpp_quantize.py
# compares every preset's plan with the file llama.cpp writes).
FALLBACK = {"IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL",
            "IQ3_S": "IQ4_NL", "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "Q2_K": "Q4_0",
            "Q3_K": "Q4_0", "IQ4_XS": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
            "TQ1_0": "Q4_0", "TQ2_0": "Q4_0"}


class RecipeError(LowbitError):
    """An unknown type or preset, an override a tensor cannot take, a recipe that does not fit."""


def resolve_target(name: str) -> tuple[Preset, bool]:
    """TYPE as given to `lowbit quantize`: a preset, or a plain type (as a one-type preset).
    Returns the preset and whether it is a llama.cpp mix (rules apply) or a plain type."""
    key = name.upper()
    if key in PRESETS:
        return PRESETS[key], True
    try:
        qtype = by_name(key)
    except UnsupportedTypeError:
        raise RecipeError(f"unknown type or preset {name!r}; presets: {', '.join(PRESETS)}") from None
    return Preset(qtype.name, file_type_of(qtype.name), qtype.name), False


def file_type_of(type_name: str) -> int:
    """general.file_type of a file made mostly of this type: the ftype of llama.cpp's preset of
    that name, or of its _M mix for Q3_K, Q4_K and Q5_K (as llama-quantize takes them); F16's
    for a type with no preset (MXFP4)."""
    for key in (type_name, type_name + "_M"):
        if key in PRESETS:
            return PRESETS[key].file_type
    return PRESETS["F16"].file_type


def is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp quantizes 2-D `*.weight` tensors other than norms."""
    return name.endswith(".weight") and len(shape) >= 2 and "_norm" not in name


def use_more_bits(i: int, n: int) -> bool:
    """The layers llama.cpp favours: the first and last eighth, and every third in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class ModelShape:
    n_layer: int
    n_gqa: int              # query heads per key/value head
    has_output: bool        # a separate output.weight (else token_embd doubles as output)
    n_attn_v: int = 0


@dataclass
class Choice:
    name: str
    qtype: QuantType
    reason: str


def layer_index(name: str, counted: int) -> int:
    """The block number in a tensor's name (blk.N.*), else how many such tensors came before.
    llama.cpp goes by the name: files need not list their blocks in numeric order (SmolLM2's
    lists blk.0, blk.1, blk.10, blk.11, ...)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        return int(parts[1])
    return counted


@dataclass
class RuleState:
    i_attn_v: int = 0
    i_ffn_down: int = 0


def preset_rule(p: str, name: str, n_cols: int, m: ModelShape, st: RuleState, has_imatrix: bool) -> str:
    """The type llama.cpp's rules give tensor `name` under preset p (before fallbacks)."""
    t = PRESETS[p].default
    tiny_iq = p in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
    block = by_name(t).block_size
    if name == "output.weight" or (not m.has_output and name == "token_embd.weight"):
        if n_cols % block:
            return "Q8_0"
        if tiny_iq or p == "IQ3_XXS":
            return "Q5_K"
        return "Q6_K" if t != "Q8_0" else t
    if name == "token_embd.weight":
        if p in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if p in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S"
        if p in ("TQ1_0", "TQ2_0"):
            return "Q4_K"
        return t
    if tiny_iq:
        if "attn_v.weight" in name:
            st.i_attn_v += 1
            if m.n_gqa >= 4:
                return "Q4_K"
            return "IQ3_S" if p in ("IQ2_S", "IQ2_M") else "Q2_K"
        if "ffn_down" in name:
            i = layer_index(name, st.i_ffn_down)
            st.i_ffn_down += 1
            if i < m.n_layer // 8:
                return "IQ3_S" if p in ("IQ2_S", "IQ2_M") else "Q2_K"
            return t
        if "attn_output.weight" in name:
            if p in ("IQ1_S", "IQ1_M"):
                return "IQ2_XXS"
            if p in ("IQ2_S", "IQ2_M"):
                return "IQ3_S"
        return t
    if "attn_v.weight" in name:
        i = layer_index(name, st.i_attn_v)
        st.i_attn_v += 1
        gqa4 = m.n_gqa >= 4
        if p == "Q2_K":
            return "Q4_K" if gqa4 else "Q3_K"
        if p == "Q2_K_S" and gqa4:
            return "Q4_K"
        if p == "IQ3_XXS":
            return "Q4_K" if gqa4 else ("IQ3_XXS" if has_imatrix else "IQ3_S")
        if p in ("IQ3_XS", "IQ3_S") and gqa4:
            return "Q4_K"
        if p == "IQ3_M":
            return "Q4_K"
        if p == "Q3_K_M":
            return "Q5_K" if i < 2 else "Q4_K"
        if p == "Q3_K_L":
            return "Q5_K"
        if p in ("IQ4_NL", "IQ4_XS") and gqa4:
            return "Q5_K"
        if p in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, m.n_attn_v):
            return "Q6_K"
        if p == "Q4_K_S" and i < 4:
            return "Q5_K"
        return t
    if "attn_k.weight" in name or "attn_q.weight" in name:
        if p == "IQ3_XS":
            return "IQ3_XXS"
        if p == "IQ3_XXS":
            return "IQ2_S"
        return t
    if "ffn_down" in name:
        i, n = layer_index(name, st.i_ffn_down), m.n_layer
        st.i_ffn_down += 1
        if p == "Q2_K":
            return "Q3_K"
        if p == "Q2_K_S":
            return "Q4_K" if i < n // 8 else t
        if p == "IQ3_XXS" and not has_imatrix:
            return "Q4_K" if i < n // 8 else "Q3_K"
        if p == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K"
        if p == "IQ3_M" and i < n // 8:
            return "Q4_K"
        if p == "Q3_K_L":
            return "Q5_K"
        if p == "Q4_K_M":
            return "Q6_K" if use_more_bits(i, n) else t
        if p in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not has_imatrix:
            return "Q5_K"
        if p == "Q5_K_M" and use_more_bits(i, n):
            return "Q6_K"
        if p == "Q4_K_S" and i < n // 8:
            return "Q5_K"
        if p in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            return "Q4_1" if p == "Q4_0" else "Q5_1"
        return t
    if "attn_output.weight" in name:
        return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K",
                "IQ3_M": "Q4_K"}.get(p, t)
    if ("ffn_gate" in name or "ffn_up" in name) and p == "IQ3_XS":
        i = int(name.split(".")[1]) if name.startswith("blk.") else 0
        if m.n_layer // 8 <= i < 7 * m.n_layer // 8:
            return "IQ3_XXS"
    return t


def fit_rows(qtype: QuantType, n_cols: int) -> tuple[QuantType, str]:
    """qtype, or llama.cpp's fallback when its blocks do not divide the row."""
    if n_cols % qtype.block_size == 0:
        return qtype, ""
    fb = by_name(FALLBACK.get(qtype.name, "F16"))
    if n_cols % fb.block_size:
        fb = by_name("F16")
    return fb, f"rows of {n_cols} are not whole {qtype.name} blocks: fallback {fb.name}"


@dataclass
class PlanOptions:
    target: str | None                       # a type or preset; None with a recipe
    pure: bool = False
    has_imatrix: bool = False
    output_type: str | None = None
    token_embedding_type: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)   # (regex, type) in order
    recipe: dict[str, str] | None = None     # tensor -> type for every quantizable tensor


def plan(tensors: list[tuple[str, tuple[int, ...]]], shape: ModelShape, opts: PlanOptions) -> list[Choice]:
    """The type of every tensor, in file order, with the reason for it."""
    if opts.recipe is not None:
        return plan_from_recipe(tensors, opts.recipe)
    preset, is_mix = resolve_target(opts.target)
    patterns = []
    for rx, tname in opts.overrides:
        try:
            patterns.append((re.compile(rx), by_name(tname)))
        except re.error as e:
            raise RecipeError(f"the tensor-type pattern {rx!r} is not a valid regex: {e}") from None
    shape.n_attn_v = sum(1 for n, _ in tensors if "attn_v.weight" in n)
    st = RuleState()
    out = []
    for name, tshape in tensors:
        if not is_quantizable(name, tshape):
            out.append(Choice(name, by_name("F32"), "kept F32 (not a 2-D weight)"))
            continue
        n_cols = tshape[-1]
        if is_mix and not opts.pure and preset.name not in ("F16", "BF16", "F32"):
            tname = preset_rule(preset.name, name, n_cols, shape, st, opts.has_imatrix)
            reason = "preset rule" if tname != preset.default else "preset default"
        else:
            tname, reason = preset.default, "pure" if opts.pure else "type"
        is_output = name == "output.weight" or (not shape.has_output and name == "token_embd.weight")
        if opts.output_type and is_output:
            tname, reason = opts.output_type, "--output-tensor-type"
        elif opts.token_embedding_type and name == "token_embd.weight":
            tname, reason = opts.token_embedding_type, "--token-embedding-type"
        for rx, qt in patterns:
            if rx.search(name):
                tname, reason = qt.name, f"--tensor-type {rx.pattern}"
                break
        qtype, why = fit_rows(by_name(tname), n_cols)
        if why and reason.startswith("--"):
            raise RecipeError(f"{name} has rows of {n_cols}, which {tname} ({reason}) cannot take "
                              f"(blocks of {by_name(tname).block_size})")
        out.append(Choice(name, qtype, why or reason))
    return out


def plan_from_recipe(tensors: list[tuple[str, tuple[int, ...]]], recipe: dict[str, str]) -> list[Choice]:
    """Every quantizable tensor takes the type the recipe names for it, exactly."""
    names = {n for n, _ in tensors}
    for name in recipe:
        if name not in names:
            raise RecipeError(f"the recipe names {name}, which the model does not have")
    out = []
    for name, tshape in tensors:
        if not is_quantizable(name, tshape):
            if name in recipe and recipe[name] != "F32":
                raise RecipeError(f"the recipe gives {name} the type {recipe[name]}, but it is not a "
                                  f"weight matrix: it stays F32")
            out.append(Choice(name, by_name("F32"), "kept F32 (not a 2-D weight)"))
            continue
        if name not in recipe:
            raise RecipeError(f"the recipe does not name {name}; a recipe lists every weight matrix")
        try:
            qtype = by_name(recipe[name])
        except UnsupportedTypeError:
            raise RecipeError(f"the recipe gives {name} the unknown type {recipe[name]!r}") from None
        if tshape[-1] % qtype.block_size:
            raise RecipeError(f"{name} has rows of {tshape[-1]}, which {qtype.name} (recipe) cannot take "
                              f"(blocks of {qtype.block_size})")
        out.append(Choice(name, qtype, "recipe"))
    return out
