"""How much each tensor matters: the cost table that `lowbit quantize --target-bpw` allocates on.

For every quantizable tensor t and candidate type q:
  * E(t, q): the importance-weighted squared error of t encoded as q, sum_rows sum_i imp_i (w - q)^2
    (imp: the importance matrix's mean squared activations; uniform for the token embedding,
    which no matrix multiplies). For a linear layer this is the mean squared error the
    quantization adds to the layer's outputs, so it is the natural first-order predictor.
  * the measured KLD: the model's mean KL-divergence from the unquantized model over a sample
    of calibration text, with t alone quantized to a reference type (Q3_K where the rows take
    256-blocks, Q4_0 otherwise). That gives each tensor its gain g(t) = KLD / E at the
    reference, the part E cannot know: how strongly an error at t's place in the network
    reaches the logits.
The predicted cost of t as q is g(t) * E(t, q). A sample of other (t, q) pairs is measured too,
held out, to report how well the predictors rank what is measured (Spearman), for E alone, for
E scaled by a gain per tensor kind, and for the gains that the allocator uses.

Two modes. "tensor" measures every tensor's gain: one model run per tensor, so its cost grows
with layers x model size. "kind" measures the gain of each tensor kind (attn_q, ffn_down, ...) at
a few depths (PROBED_DEPTHS layers, first and last included), gives the other layers the median
of their kind's measured gains, and estimates E on fewer rows: a fixed number of model runs
whatever the depth. Its held-out pairs include unprobed tensors at the reference type, so its
rank correlation checks the estimate too.

Tables are cached by the content of what they depend on (model, importance matrix, sample), so
a --dry-run followed by the real run measures once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lowbit.quant.allocate import AllocationError
from lowbit.quant.decode import dequantize
from lowbit.quant.gguffile import GGUFFile
from lowbit.quant.imatrix import ImportanceMatrix
from lowbit.quant.jit_cache import cache_dir
from lowbit.quant.recipes import is_quantizable
from lowbit.quant.score_gain import quantize_tensor_rows
from lowbit.quant.types import by_name
from lowbit.runtime.finite import check_logits

from .kld import kl_divergence
from .loading import write_atomically
from .perplexity import log_softmax_rows

# The types the allocator chooses among (those a row length cannot take are left out per tensor).
CANDIDATES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "Q2_K", "Q3_K",
              "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q4_0", "Q5_0", "Q5_1", "Q8_0"]
REFERENCE = ("Q3_K", "Q4_0")     # the measured type: 256-block rows, other rows (when candidates)
MODES = ("tensor", "kind")
ROW_SAMPLE = {"tensor": 4096, "kind": 512}   # rows of a tensor encoded to estimate E (scaled up)
PROBED_DEPTHS = 4                # "kind": layers per tensor kind whose KLD is measured
HELD_OUT = 48                    # extra (tensor, type) pairs measured to check the predictors
VERSION = 3                      # 2: swaps reach the stacked q/k/v and gate/up products;
                                 # 3: attn_q/attn_k encoded at their least-squares gain


@dataclass
class TensorCosts:
    name: str
    kind: str                    # attn_q, ffn_down, token_embd, ...
    layer: int                   # -1 outside the blocks
    n_params: int
    n_cols: int
    bytes: dict = field(default_factory=dict)      # type -> bytes of the whole tensor
    error: dict = field(default_factory=dict)      # type -> E(t, q)
    measured: dict = field(default_factory=dict)   # type -> KLD with t alone quantized
    reference: str = ""
    probed: bool = True          # its gain measured ("kind" mode: only at a few depths)
    estimated_gain: float = 0.0  # unprobed: the median gain of its kind's probed layers
    error_seconds: float = 0.0   # time spent estimating E for every candidate
    probe_seconds: float = 0.0   # time spent measuring the KLD at the reference

    @property
    def own_gain(self) -> float:
        e = self.error.get(self.reference, 0.0)
        return self.measured.get(self.reference, 0.0) / e if e > 0 else 0.0

    @property
    def gain(self) -> float:
        return self.own_gain if self.probed else self.estimated_gain

    def held_out(self, qtype: str) -> bool:
        """Whether the KLD measured at qtype checks the prediction (was not used to make it)."""
        return not (self.probed and qtype == self.reference)

    def predicted(self, qtype: str) -> float:
        return self.gain * self.error[qtype]


@dataclass
class SensitivityTable:
    model: str
    tensors: list[TensorCosts]
    sample_tokens: int
    seconds: float = 0.0
    rank_correlation: dict = field(default_factory=dict)
    mode: str = "tensor"

    def to_json(self) -> dict:
        return {"version": VERSION, "model": self.model, "sample_tokens": self.sample_tokens,
                "seconds": self.seconds, "rank_correlation": self.rank_correlation, "mode": self.mode,
                "tensors": [asdict(t) for t in self.tensors]}

    @classmethod
    def from_json(cls, d: dict) -> "SensitivityTable":
        tensors = [TensorCosts(**t) for t in d["tensors"]]
        estimate_gains(tensors)      # by today's rule, from what was measured
        table = cls(d["model"], tensors, d["sample_tokens"], d["seconds"], d["rank_correlation"],
                    d.get("mode", "tensor"))
        table.rank_correlation = rank_correlations(tensors) or table.rank_correlation
        return table


def tensor_kind(name: str) -> tuple[str, int]:
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) >= 3:
        return parts[2], int(parts[1])
    return parts[0], -1


def candidate_types(n_cols: int, allowed: list[str] | None = None) -> list[str]:
    return [t for t in (allowed or CANDIDATES) if n_cols % by_name(t).block_size == 0]


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if len(ra) < 3 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


class SensitivityProbe:
    """Swaps one tensor of a loaded model for a quantized version and measures the KLD."""

    def __init__(self, model, sample: np.ndarray):
        self.model = model
        self.sample = sample
        self.base = self._log_probs()
        self.base_p = np.exp(self.base)   # once: every probe compares against it

    def _log_probs(self) -> np.ndarray:
        logits = self.model.forward(self.sample, self.model.new_cache(len(self.sample)), logits_from=0)
        check_logits(logits, self.sample, 0, "in the calibration sample")
        return log_softmax_rows(logits)

    def kld_with(self, name: str, raw: np.ndarray, qtype) -> float:
        from lowbit.runtime.kernels import QuantMatrix
        t = self.model.gguf.tensors[name]
        old = self.model.swap_matrix(name, QuantMatrix(raw, qtype, t.shape[0], t.shape[1], name))
        try:
            lq = self._log_probs()
        finally:
            self.model.swap_matrix(name, old)
        return float(kl_divergence(self.base, lq, self.base_p).mean())


def _error(name: str, rows: np.ndarray, qtype, imp: np.ndarray | None) -> float:
    q = dequantize(quantize_tensor_rows(name, rows, qtype, imp), qtype, rows.shape)
    d2 = np.square(rows.astype(np.float64) - q)
    return float((d2 * imp).sum()) if imp is not None else float(d2.sum())


@dataclass
class TensorTask:
    """One tensor's measurement: what it needs besides the model and the sample, so that it can
    run anywhere (locally, or as a task on a cluster: eval/cluster.py)."""
    name: str
    rows: np.ndarray | None          # the rows E is estimated on (None: all of them)
    types: list[str]                 # the candidates its rows can take
    reference: str                   # the type whose KLD is measured
    importance: np.ndarray | None    # the importance matrix's entry for it
    probe: bool = True               # measure the KLD at the reference ("kind" mode: a few layers)


@dataclass
class Measurements:
    """Every measurement a table needs, with the random choices made up front (row samples,
    held-out pairs), so that running them in any order or place gives the same table."""
    tensors: list[TensorTask]
    held_out: list[tuple[int, str]]  # (index into tensors, type)


def probed_layers(layers: list[int], depths: int = PROBED_DEPTHS) -> set[int]:
    """The layers of one tensor kind whose gain "kind" mode measures: evenly spread, first and
    last included."""
    layers = sorted(layers)
    picks = np.rint(np.linspace(0, len(layers) - 1, min(depths, len(layers)))).astype(int)
    return {layers[i] for i in picks}


def plan_measurements(src: GGUFFile, im: ImportanceMatrix, seed: int = 0,
                      candidates: list[str] | None = None, mode: str = "tensor") -> Measurements:
    if mode not in MODES:
        raise ValueError(f"unknown sensitivity mode {mode!r}")
    rng = np.random.default_rng(seed)
    names = [n for n, t in src.tensors.items() if is_quantizable(n, t.shape)]
    probe = set(names)
    if mode == "kind":
        by_kind: dict[str, dict[int, str]] = {}
        for name in names:
            kind, layer = tensor_kind(name)
            if layer >= 0:
                by_kind.setdefault(kind, {})[layer] = name
        for layers in by_kind.values():
            probe -= {layers[k] for k in set(layers) - probed_layers(list(layers))}
    tasks = []
    for name in names:
        t = src.tensors[name]
        n_rows = t.n_elements // t.n_cols
        sample = ROW_SAMPLE[mode]
        pick = np.sort(rng.choice(n_rows, sample, replace=False)) if n_rows > sample else None
        types = candidate_types(t.n_cols, candidates)
        if not types:
            raise AllocationError(f"none of the candidate types can take {name}'s rows of {t.n_cols}")
        reference = next((r for r in REFERENCE if r in types), types[len(types) // 2])
        tasks.append(TensorTask(name, pick, types, reference, im.importance(name), name in probe))
    # Held-out pairs: other types of random tensors (and unprobed tensors at any type), to check
    # how the predictors rank.
    pairs = [(k, q) for k, task in enumerate(tasks) for q in task.types
             if not (task.probe and q == task.reference)]
    chosen = rng.choice(len(pairs), min(HELD_OUT, len(pairs)), replace=False)
    return Measurements(tasks, [pairs[i] for i in chosen])


CHUNK_ROWS = 4096                # rows dequantized at a time to encode a whole tensor


def _weights(src: GGUFFile, name: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Some rows of a tensor as float32 (only those are dequantized)."""
    t = src.tensors[name]
    raw = src.raw(name).reshape(-1, t.qtype.row_bytes(t.n_cols))[rows]
    return dequantize(np.ascontiguousarray(raw), t.qtype, (len(raw), t.n_cols)).reshape(-1, t.n_cols)


def _encoded(src: GGUFFile, task: TensorTask, qtype) -> np.ndarray:
    """The whole tensor encoded as qtype, CHUNK_ROWS rows at a time: the float32 copy of a large
    matrix (an output layer of 150k rows) never exists whole."""
    t = src.tensors[task.name]
    n_rows = t.n_elements // t.n_cols
    return np.concatenate([quantize_tensor_rows(task.name, _weights(src, task.name, slice(r, r + CHUNK_ROWS)),
                                                qtype, task.importance)
                           for r in range(0, n_rows, CHUNK_ROWS)])


def measure_tensor(src: GGUFFile, probe: SensitivityProbe, task: TensorTask) -> TensorCosts:
    """E(t, q) for every candidate q, and the KLD with t alone at the reference type."""
    t = src.tensors[task.name]
    kind, layer = tensor_kind(task.name)
    n_rows = t.n_elements // t.n_cols
    rows = _weights(src, task.name, slice(None) if task.rows is None else task.rows)
    scale = n_rows / len(rows)
    tc = TensorCosts(task.name, kind, layer, t.n_elements, t.n_cols, reference=task.reference,
                     probed=task.probe)
    start = time.perf_counter()
    for q in task.types:
        qt = by_name(q)
        tc.bytes[q] = qt.row_bytes(t.n_cols) * n_rows
        tc.error[q] = _error(task.name, rows, qt, task.importance) * scale
    tc.error_seconds = time.perf_counter() - start
    if task.probe:
        ref = by_name(task.reference)
        tc.measured[task.reference] = probe.kld_with(task.name, _encoded(src, task, ref), ref)
        tc.probe_seconds = time.perf_counter() - start - tc.error_seconds
    return tc


def measure_pair(src: GGUFFile, probe: SensitivityProbe, task: TensorTask, qtype: str) -> float:
    """The KLD with the tensor alone quantized to another type than the reference (held out)."""
    q = by_name(qtype)
    return probe.kld_with(task.name, _encoded(src, task, q), q)


def estimate_gains(tensors: list[TensorCosts]) -> None:
    """Each unprobed tensor's estimated gain: the median of the gains measured for its kind.
    (Interpolating between the probed depths ranked worse: the first layer's gain is often
    orders of magnitude above the rest, and an interpolation carries it into its neighbours.)"""
    for kind in {tc.kind for tc in tensors if not tc.probed}:
        gains = [tc.own_gain for tc in tensors if tc.kind == kind and tc.probed]
        if not gains:
            raise ValueError(f"no probed {kind} tensor to estimate the others' gain from")
        median = float(np.median(gains))
        for tc in tensors:
            if tc.kind == kind and not tc.probed:
                tc.estimated_gain = median


def assemble(src: GGUFFile, plan: Measurements, tensors: list[TensorCosts], held_out: list[float],
             n_tokens: int, seconds: float, mode: str = "tensor") -> SensitivityTable:
    """The table from the measurements' results (in the plan's order)."""
    for (k, q), kld in zip(plan.held_out, held_out):
        tensors[k].measured[q] = kld
    estimate_gains(tensors)
    table = SensitivityTable(str(src.path), tensors, n_tokens, seconds, mode=mode)
    table.rank_correlation = rank_correlations(tensors)
    return table


def build_table(src: GGUFFile, model, im: ImportanceMatrix, sample: np.ndarray, seed: int = 0,
                progress: Callable[[str], None] = lambda s: None,
                candidates: list[str] | None = None, mode: str = "tensor") -> SensitivityTable:
    start = time.perf_counter()
    plan = plan_measurements(src, im, seed, candidates, mode)
    probe = SensitivityProbe(model, sample)
    tensors = []
    for k, task in enumerate(plan.tensors):
        progress(f"tensor {k + 1}/{len(plan.tensors)}: {task.name}")
        tensors.append(measure_tensor(src, probe, task))
    held_out = []
    for j, (k, q) in enumerate(plan.held_out):
        progress(f"held-out KLD {j + 1}/{len(plan.held_out)}: {plan.tensors[k].name} as {q}")
        held_out.append(measure_pair(src, probe, plan.tensors[k], q))
    return assemble(src, plan, tensors, held_out, len(sample), time.perf_counter() - start, mode)


def rank_correlations(tensors: list[TensorCosts]) -> dict:
    """Spearman between measured held-out KLD and three predictors."""
    held = [(tc, q) for tc in tensors for q in tc.measured if tc.held_out(q)]
    if len(held) < 3:
        return {}
    kind_gain = {}
    for kind in {tc.kind for tc in tensors}:
        g = [tc.own_gain for tc in tensors if tc.kind == kind and tc.probed and tc.own_gain > 0]
        kind_gain[kind] = float(np.median(g)) if g else 0.0
    measured = [tc.measured[q] for tc, q in held]
    return {
        "pairs": len(held),
        "error_alone": spearman([tc.error[q] for tc, q in held], measured),
        "error_times_kind_gain": spearman([kind_gain[tc.kind] * tc.error[q] for tc, q in held], measured),
        "error_times_tensor_gain": spearman([tc.predicted(q) for tc, q in held], measured),
    }


def cache_key(src: GGUFFile, im_path: str, sample: np.ndarray, candidates: list[str] | None,
              mode: str = "tensor") -> str:
    h = hashlib.sha256()
    h.update(",".join(candidates or CANDIDATES).encode())
    h.update(str(VERSION).encode())   # with one file, the key it always had
    if mode != "tensor":
        h.update(f"|{mode}".encode())  # "tensor" tables keep the key they always had
    for shard in src.shards:
        st = os.stat(shard)
        h.update(f"|{shard.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(Path(im_path).read_bytes())
    h.update(np.ascontiguousarray(sample, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def load_or_build(src: GGUFFile, model_loader: Callable, im: ImportanceMatrix, im_path: str,
                  sample: np.ndarray, progress=lambda s: None,
                  candidates: list[str] | None = None, cluster=None, mode: str = "tensor") -> SensitivityTable:
    """The table from the cache, or measured: here, or on `cluster` (eval/cluster.py) when given."""
    path = cache_dir() / "sensitivity" / f"{cache_key(src, im_path, sample, candidates, mode)}.json"
    if path.exists():
        return SensitivityTable.from_json(json.loads(path.read_text()))
    if cluster is not None:
        from .sensitivity_cluster import build_table_on_cluster
        table = build_table_on_cluster(cluster, src, im, sample, progress=progress, candidates=candidates,
                                       mode=mode)
    else:
        table = build_table(src, model_loader(), im, sample, progress=progress, candidates=candidates,
                            mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(table.to_json()))
    return table
