"""`lowbit ladder`: quantize one model to many types, measure each, and keep the results.

For every requested type (a GGML type or a llama.cpp preset), with the importance matrix and,
with --with-and-without-imatrix, without it, one entry: the file's size and bits per weight
(whole file, and over the tensors that took the preset's own type), quantization seconds and
peak memory, PPL and KL-divergence against the source model on the evaluation text, and
prompt/generation speed. With --llama-quantize, each preset is also made by llama.cpp's own
quantizer (eval/llama_quantize.py) and measured the same way, as an entry of its own.

The source model's exact weights are the base: its distributions on the evaluation text are
stored once (base.kld) and every entry is compared against them. Everything lands in the output
directory: results.json is rewritten after each finished entry, so an interrupted ladder starts
again where it stopped. Quality (the file, PPL, KLD) is recomputed only when the model, text,
-c, chunks or importance matrix change; speed is measured apart and again only when the threads
or test lengths change, so a ladder can be run with --bench-prompt 0 --bench-gen 0 on a busy
machine and have its speed filled in later on a quiet one (numba's parallel loops lose far more
than their share when other processes compete for the cores).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from lowbit.quant import imatrix as imx
from lowbit.quant.errors import LowbitError
from lowbit.quant.gguffile import open_gguf
from lowbit.quant.quantize_model import quantize_model
from lowbit.quant.recipes import NEEDS_IMATRIX, PRESETS_NEEDING_IMATRIX, PlanOptions, RecipeError, resolve_target

from .llama_quantize import LLAMA_QUANTIZE, check_binary, run_llama_quantize
from .loading import read_text, write_atomically
from .report import LOWBIT, alloc_budget, alloc_name, without_source

RESULTS = "results.json"
# the layer pass's variants of a preset (eval/layer_pass.py): error feedback, scales, both
METHODS = {"gptq": dict(gptq=True, awq_scales=False), "awq": dict(gptq=False, awq_scales=True),
           "gptq+awq": dict(gptq=True, awq_scales=True)}


class LadderError(LowbitError):
    """Ladder settings that cannot run, or a results file that is not one."""


@dataclass
class LadderConfig:
    model: Path                      # the source GGUF (its exact weights are the base)
    eval_text: Path
    out_dir: Path
    types: list[str]
    imatrix: Path | None = None      # an importance matrix file, or
    calib_text: Path | None = None   # calibration text to collect one from
    with_and_without: bool = False
    n_ctx: int = 512
    chunks: int | None = 20
    calib_chunks: int | None = 40
    threads: int = 2
    bench_prompt: int = 128
    bench_gen: int = 32
    bench_reps: int = 2
    keep_files: bool = True
    allocate: list[float] = field(default_factory=list)   # --target-bpw mixes to add (bits per weight)
    allocate_without_source: list[float] = field(default_factory=list)   # ... not taking the source's types
    sensitivity_tokens: int = 512
    sensitivity_mode: str = "tensor"  # eval/sensitivity.py: a gain per tensor, or per kind at a few depths
    llama_quantize: Path | None = None   # llama.cpp's llama-quantize: its files as entries beside lowbit's
    extra_text: str | None = None    # a second evaluation text (a file, or "python-stdlib"): PPL and KLD
    extra_chunks: int | None = 20
    methods: list[str] = field(default_factory=list)   # each preset also made with these (METHODS)
    pass_chunks: int = 10            # the layer pass's calibration chunks to fit, and
    pass_held_out: int = 4           # ... held out (eval/layer_pass.py), from --calib

    def extra_settings(self) -> dict | None:
        """What the entries' second-text figures depend on (None: no second text)."""
        if self.extra_text is None:
            return None
        from .code_text import PYTHON_STDLIB, sample_name
        name = sample_name() if self.extra_text == PYTHON_STDLIB else Path(self.extra_text).name
        return {"text": name, "n_ctx": self.n_ctx, "chunks": self.extra_chunks}

    def read_extra_text(self) -> str:
        from .code_text import PYTHON_STDLIB, python_stdlib_sample
        return python_stdlib_sample() if self.extra_text == PYTHON_STDLIB else read_text(self.extra_text)

    def settings(self) -> dict:
        """What an entry's quality depends on: a change recomputes every entry."""
        return {"model": self.stored_model(), "eval_text": self.eval_text.name, "n_ctx": self.n_ctx,
                "chunks": self.chunks, "imatrix": self.stored(self.imatrix_path())}

    def stored(self, path) -> str:
        """A path as results.json keeps it: relative to the output directory, so the directory
        can move (or be committed) and still resume."""
        return os.path.relpath(Path(path).resolve(), self.out_dir.resolve())

    def stored_model(self) -> str:
        """The source model as results.json keeps it: its name if it is a known model of the
        store (its path is the user's cache), else its path relative to the output directory."""
        from .model_store import known_name
        return known_name(self.model) or self.stored(self.model)

    def resolved(self, stored: str) -> Path:
        """The path a stored path names (absolute ones, as older results.json kept, as they are)."""
        return self.out_dir / stored

    def speed_settings(self) -> dict | None:
        """What an entry's speed depends on (None: no speed tests asked for)."""
        if not (self.bench_prompt or self.bench_gen):
            return None
        return {"threads": self.threads, "pp": self.bench_prompt, "tg": self.bench_gen,
                "reps": self.bench_reps}

    def imatrix_path(self) -> Path:
        return self.imatrix if self.imatrix is not None else self.out_dir / "imatrix.gguf"

    def check(self) -> None:
        """What can be checked before anything runs: the inputs exist, a way to an importance
        matrix, at least one type (the types themselves: entries_to_run)."""
        if self.imatrix is None and self.calib_text is None:
            raise LadderError("give --imatrix FILE or --calib TEXT (or both: --calib then only measures "
                              "the sensitivity that --allocate needs)")
        from .code_text import PYTHON_STDLIB
        extra = None if self.extra_text == PYTHON_STDLIB else self.extra_text
        for path in (self.eval_text, self.calib_text, self.imatrix, extra):
            if path is not None and not Path(path).is_file():
                raise LadderError(f"{path} does not exist")
        if not self.types:
            raise LadderError("--types needs at least one type")
        if self.llama_quantize is not None:
            check_binary(self.llama_quantize)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise LadderError(f"unknown method {unknown[0]!r}: choose among {', '.join(METHODS)}")
        if self.methods and self.calib_text is None:
            raise LadderError("--methods needs --calib TEXT: the calibration activations come from it")


@dataclass
class Entry:
    type: str
    imatrix: bool
    status: str = "ok"               # "ok", "requires imatrix", "failed: ..."
    file: str = ""
    file_bytes: int = 0
    n_params: int = 0
    bpw: float = 0.0                 # whole file, over the quantizable tensors' bytes
    type_bpw: float = 0.0            # over the tensors that took the preset's own type
    type_share: float = 0.0          # the share of the weights those tensors hold
    type_counts: dict = field(default_factory=dict)
    quantize_seconds: float = 0.0
    quantize_peak_bytes: int = 0     # peak resident memory while quantizing (0: not measured)
    quantizer: str = LOWBIT          # LOWBIT or LLAMA_QUANTIZE
    ppl: float = 0.0
    ppl_error: float = 0.0
    kld: dict = field(default_factory=dict)
    eval_seconds: float = 0.0
    speed: dict = field(default_factory=dict)   # settings, pp_tps, tg_tps (empty: not measured)
    extra: dict = field(default_factory=dict)   # ppl, ppl_error, kld on the second text (empty: none)
    sensitivity: str = ""            # a mix: the sensitivity mode its plan came from
    method: str = ""                 # a preset made with the layer pass: a METHODS key

    @property
    def key(self) -> str:
        key = f"{self.type}/{'imatrix' if self.imatrix else 'none'}"
        if self.method:
            key += f"/{self.method}"
        return key if self.quantizer == LOWBIT else f"{key}/{self.quantizer}"



def entries_to_run(cfg: LadderConfig) -> list[Entry]:
    cfg.check()
    if (cfg.allocate or cfg.allocate_without_source) and cfg.calib_text is None:
        raise LadderError("--allocate needs --calib TEXT: each tensor's sensitivity is measured on it")
    out = []
    for name in cfg.types:
        try:
            preset, _ = resolve_target(name)
        except RecipeError as e:
            raise LadderError(str(e)) from None
        needs = preset.default in NEEDS_IMATRIX or preset.name in PRESETS_NEEDING_IMATRIX
        quantizers = [LOWBIT] + ([LLAMA_QUANTIZE] if cfg.llama_quantize is not None else [])
        for quantizer in quantizers:
            out.append(Entry(preset.name, True, quantizer=quantizer))
            if cfg.with_and_without:
                out.append(Entry(preset.name, False, status="requires imatrix" if needs else "ok",
                                 quantizer=quantizer))
        out += [Entry(preset.name, True, method=m) for m in cfg.methods]
    out += [Entry(alloc_name(b), True, sensitivity=cfg.sensitivity_mode) for b in cfg.allocate]
    out += [Entry(alloc_name(b, without_source=True), True, sensitivity=cfg.sensitivity_mode)
            for b in cfg.allocate_without_source]
    return out


def load_results(cfg: LadderConfig) -> dict:
    path = cfg.out_dir / RESULTS
    if not path.exists():
        return {"settings": cfg.settings(), "base": None, "entries": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise LadderError(f"{path} is not a results file; remove it or choose another -o") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise LadderError(f"{path} is not a results file; remove it or choose another -o")
    relative_paths(cfg, data)
    if data.get("settings") != cfg.settings():
        # Another model, text, -c, chunks or imatrix: nothing measured before is comparable.
        data = {"settings": cfg.settings(), "base": None, "entries": {}}
    return data


def relative_paths(cfg: LadderConfig, data: dict) -> None:
    """Results written with absolute paths (before they were kept relative) in today's form."""
    from .model_store import known_name

    def fix(record: dict, key: str, model: bool = False) -> None:
        if isinstance(record, dict) and os.path.isabs(record.get(key) or ""):
            record[key] = (model and known_name(record[key])) or cfg.stored(record[key])
    fix(data.get("settings"), "model", model=True)
    fix(data.get("settings"), "imatrix")
    fix(data.get("base"), "file", model=True)
    for record in data["entries"].values():
        fix(record, "file")


def save_results(cfg: LadderConfig, data: dict) -> None:
    write_atomically(cfg.out_dir / RESULTS, json.dumps(data, indent=1))


@dataclass
class Evaluation:
    """What an entry is measured on: the text, the base distributions, -c and chunks."""
    text: str
    base: Path
    n_ctx: int
    chunks: int | None


def entry_file_name(model: Path, entry: Entry) -> str:
    by = "" if entry.quantizer == LOWBIT else f"-{entry.quantizer}"
    method = f"-{entry.method.replace('+', '-')}" if entry.method else ""
    return f"{model.stem}-{entry.type}{'' if entry.imatrix else '-noimatrix'}{method}{by}.gguf"


def measure_entry(entry: Entry, src, out: Path, opts: PlanOptions, default: str | None, im, imatrix_label: str,
                  ev: Evaluation, stage: Callable[[str], None], extra: Evaluation | None = None,
                  layer_pass: Callable[[PlanOptions, Path], dict[str, Path]] | None = None) -> Entry:
    """Quantize src to out by opts (with im if the entry takes the importance matrix, recorded
    in the file as imatrix_label) and measure the file against the base; a quantization that
    fails is the entry's status. `default`: the preset's own type (None for a mix). layer_pass
    (opts, work dir): the tensors an entry's method encodes first (its time and memory count as
    the quantization's). Runs in this process or in a cluster's worker (eval/ladder_cluster.py)."""
    from .loading import pass_work_dir
    from .speed import peak_rss_bytes, reset_peak_rss
    start = time.perf_counter()
    try:
        measured = reset_peak_rss()
        with pass_work_dir(out, layer_pass is not None) as work:
            encoded = None
            if layer_pass is not None:
                stage(f"{entry.key}: {entry.method} layer by layer")
                encoded = layer_pass(opts, work)
            stage(f"{entry.key}: quantize")
            quantize_model(src, out, opts, im if entry.imatrix else None, allow_requantize=True,
                           imatrix_path=imatrix_label if entry.imatrix else None, encoded=encoded)
    except LowbitError as e:
        entry.status = f"failed: {e}"
        return entry
    entry.quantize_seconds = time.perf_counter() - start
    entry.quantize_peak_bytes = peak_rss_bytes() if measured else 0
    describe_file(entry, out, default)
    return evaluate_entry(entry, out, ev, stage, extra)


def describe_file(entry: Entry, path: Path, default: str | None) -> None:
    """The entry's size fields from the file itself (whoever wrote it): bytes, bits per weight
    over all tensors, tensors per type, and the bits and weight share of the preset's own type."""
    f = open_gguf(path)
    entry.file, entry.file_bytes = str(path), f.file_bytes
    tensors = list(f.tensors.values())
    entry.n_params = sum(t.n_elements for t in tensors)
    entry.bpw = 8.0 * sum(t.n_bytes for t in tensors) / entry.n_params if entry.n_params else 0.0
    entry.type_counts = {}
    for t in tensors:
        entry.type_counts[t.qtype.name] = entry.type_counts.get(t.qtype.name, 0) + 1
    if default is not None:
        own = [t for t in tensors if t.qtype.name == default]
        params = sum(t.n_elements for t in own)
        entry.type_bpw = 8.0 * sum(t.n_bytes for t in own) / params if params else 0.0
        entry.type_share = params / entry.n_params if entry.n_params else 0.0


def evaluate_entry(entry: Entry, path: Path, ev: Evaluation, stage: Callable[[str], None],
                   extra: Evaluation | None = None) -> Entry:
    """PPL and KLD of the entry's file against the base, read by lowbit (and on the second
    text, if there is one, into entry.extra)."""
    from .kld import compare_to_base
    from .loading import load_model
    stage(f"{entry.key}: perplexity and KLD")
    start = time.perf_counter()
    model, tok = load_model(path)
    res, kld = compare_to_base(model, tok, ev.text, ev.base, ev.n_ctx, ev.chunks)
    entry.ppl, entry.ppl_error, entry.kld = res.ppl, res.ppl_error, kld
    entry.eval_seconds = time.perf_counter() - start
    if extra is not None:
        stage(f"{entry.key}: perplexity and KLD on the second text")
        entry.extra = evaluate_extra(model, tok, extra)
    return entry


def evaluate_extra(model, tok, ev: Evaluation) -> dict:
    from .kld import compare_to_base
    res, kld = compare_to_base(model, tok, ev.text, ev.base, ev.n_ctx, ev.chunks)
    return {"ppl": res.ppl, "ppl_error": res.ppl_error, "kld": kld}


def needs_run(record: dict | None, entry: Entry) -> bool:
    """Whether an entry is still to measure: never measured, failed, or a mix measured from
    another sensitivity mode than the one asked for now (records from before there were modes:
    "tensor")."""
    if record is None or record["status"].startswith("failed"):
        return True
    return bool(entry.sensitivity) and (record.get("sensitivity") or "tensor") != entry.sensitivity


class Ladder:
    """Runs a LadderConfig; `stage(text)` reports what is happening, for a progress line. With a
    cluster (eval/cluster.py) the entries and the sensitivity run there (eval/ladder_cluster.py)."""

    def __init__(self, cfg: LadderConfig, stage: Callable[[str], None] = lambda s: None,
                 set_threads: Callable[[int], None] | None = None, cluster=None):
        self.cfg = cfg
        self.stage = stage
        self.set_threads = set_threads or (lambda n: None)
        self.cluster = cluster
        self.text = None
        self.extra_ev = None             # the second text's Evaluation, once its base exists

    # --- the pieces computed once ---

    def _eval_text(self) -> str:
        if self.text is None:
            self.text = read_text(self.cfg.eval_text)
        return self.text

    def ensure_imatrix(self) -> Path:
        path = self.cfg.imatrix_path()
        if path.exists():
            return path
        if self.cfg.calib_text is None:
            raise LadderError(f"the importance matrix {path} does not exist")
        self.stage(f"imatrix from {self.cfg.calib_text.name}")
        if self.cluster is not None:
            from .ladder_cluster import collect_imatrix_on_cluster
            collect_imatrix_on_cluster(self, path)
            return path
        from .imatrix_collect import collect_imatrix
        from .loading import load_model
        model, tok = load_model(self.cfg.model)
        im = collect_imatrix(model, tok, read_text(self.cfg.calib_text),
                             str(self.cfg.calib_text), self.cfg.n_ctx, self.cfg.calib_chunks)
        imx.save(im, path)
        return path

    def ensure_base(self, data: dict) -> Path:
        path = self.cfg.out_dir / "base.kld"
        if data.get("base") and path.exists():
            return path
        from .kld import write_base
        from .loading import load_model
        self.stage("base distributions")
        model, tok = load_model(self.cfg.model)
        res = write_base(model, tok, self._eval_text(), self.cfg.eval_text.name, path,
                         self.cfg.n_ctx, self.cfg.chunks)
        data["base"] = self.base_record(res)
        save_results(self.cfg, data)
        return path

    def ensure_extra_base(self, data: dict) -> None:
        """The base distributions on the second text (base-extra.kld); a change of that text, -c
        or its chunks drops what the entries measured on the old one."""
        c = self.cfg
        wanted = c.extra_settings()
        path = c.out_dir / "base-extra.kld"
        text = c.read_extra_text()
        if (data.get("extra") or {}).get("settings") != wanted or not path.exists():
            from .kld import write_base
            from .loading import load_model
            self.stage("base distributions on the second text")
            model, tok = load_model(c.model)
            res = write_base(model, tok, text, wanted["text"], path, c.n_ctx, c.extra_chunks)
            data["extra"] = {"settings": wanted, "base": {"ppl": res.ppl, "ppl_error": res.ppl_error,
                                                          "chunks": res.n_chunks}}
            for record in data["entries"].values():
                record["extra"] = {}
            save_results(c, data)
        self.extra_ev = Evaluation(text, path, c.n_ctx, c.extra_chunks)

    def measure_extra(self, record: dict, path: Path, what: str) -> None:
        """Fill record["extra"] for an entry measured before the second text was asked for, if
        its file is still there."""
        if self.extra_ev is None or record.get("extra") or not path.exists():
            return
        from .loading import load_model
        self.stage(f"{what}: perplexity and KLD on the second text")
        model, tok = load_model(path)
        record["extra"] = evaluate_extra(model, tok, self.extra_ev)

    def base_record(self, res) -> dict:
        """results.json's base: the source file and its perplexity result."""
        src_bytes = open_gguf(self.cfg.model).file_bytes      # every shard of a split model
        return {"file": self.cfg.stored_model(), "file_bytes": src_bytes, "ppl": res.ppl,
                "ppl_error": res.ppl_error, "chunks": res.n_chunks}

    # --- one entry ---

    def measure_speed(self, record: dict, path: Path, what: str) -> None:
        """Fill record["speed"] unless it holds a measurement with the current settings."""
        from .speed import bench
        c = self.cfg
        wanted = c.speed_settings()
        if wanted is None or record.get("speed", {}).get("settings") == wanted or not path.exists():
            return
        self.stage(f"{what}: speed")
        rows = bench([path], [c.threads], [c.bench_prompt] if c.bench_prompt else [],
                     [c.bench_gen] if c.bench_gen else [], c.bench_reps, startup_runs=False)
        speed = {"settings": wanted}
        for r in rows:
            speed["pp_tps" if r["n_prompt"] else "tg_tps"] = r["avg_ts"]
        record["speed"] = speed

    def allocated_options(self, src, name: str, im) -> PlanOptions:
        """The per-tensor plan of the mix `name` from the sensitivity table; its recipe goes to
        the out dir."""
        from .dynamic import plan_for_budget, source_types
        c = self.cfg
        self.stage(f"{name}: sensitivity")
        exclude = frozenset(source_types(src)) if without_source(name) else frozenset()
        _, alloc = plan_for_budget(src, im, str(c.imatrix_path()), read_text(c.calib_text),
                                   c.sensitivity_tokens, c.out_dir / f"{name}.recipe",
                                   target_bpw=alloc_budget(name), cluster=self.cluster,
                                   mode=c.sensitivity_mode, exclude=exclude)
        return PlanOptions(None, recipe=alloc.types)

    def entry_plan(self, entry: Entry, src, im) -> tuple[PlanOptions, str | None]:
        """How the entry quantizes, and the preset's own type (None for a mix)."""
        if alloc_budget(entry.type) is not None:
            return self.allocated_options(src, entry.type, im), None
        return PlanOptions(entry.type), resolve_target(entry.type)[0].default

    def layer_pass(self, entry: Entry, src, im) -> Callable[[PlanOptions, Path], dict[str, Path]]:
        """The entry's method as measure_entry runs it: the layer pass over the calibration text."""
        def run(opts: PlanOptions, work: Path) -> dict[str, Path]:
            from lowbit.quant.quantize_model import make_plan

            from .layer_pass import layer_pass
            from .loading import load_model
            c = self.cfg
            opts.has_imatrix = im is not None
            model, tok = load_model(c.model)
            files, _, _ = layer_pass(model, tok, src, {ch.name: ch.qtype for ch in make_plan(src, opts)},
                                     read_text(c.calib_text), c.n_ctx, c.pass_chunks, c.pass_held_out, work, im,
                                     **METHODS[entry.method])
            return files
        return run

    def run_entry(self, entry: Entry, base: Path, im) -> Entry:
        c = self.cfg
        ev = Evaluation(self._eval_text(), base, c.n_ctx, c.chunks)
        out = c.out_dir / entry_file_name(c.model, entry)
        if entry.quantizer == LLAMA_QUANTIZE:
            self.stage(f"{entry.key}: quantize")
            try:
                entry.quantize_seconds, entry.quantize_peak_bytes = run_llama_quantize(
                    c.llama_quantize, c.model, out, entry.type, c.imatrix_path() if entry.imatrix else None,
                    c.threads)
            except LowbitError as e:
                entry.status = f"failed: {e}"
                return entry
            describe_file(entry, out, resolve_target(entry.type)[0].default)
            entry = evaluate_entry(entry, out, ev, self.stage, self.extra_ev)
            entry.file = c.stored(entry.file)
            return entry
        src = open_gguf(c.model)
        try:
            opts, default = self.entry_plan(entry, src, im)
        except LowbitError as e:
            entry.status = f"failed: {e}"
            return entry
        entry = measure_entry(entry, src, out, opts, default, im, str(c.imatrix_path()), ev, self.stage,
                              self.extra_ev, self.layer_pass(entry, src, im) if entry.method else None)
        if entry.file:
            entry.file = c.stored(entry.file)
        return entry

    def run(self) -> dict:
        if self.cluster is not None:
            from .ladder_cluster import run_on_cluster
            return run_on_cluster(self)
        c = self.cfg
        todo = entries_to_run(c)
        if not c.out_dir.is_dir():
            c.out_dir.mkdir(parents=True)
        self.set_threads(c.threads)
        data = load_results(c)
        im = imx.load(self.ensure_imatrix()) if any(e.imatrix for e in todo) else None
        base = self.ensure_base(data)
        if c.extra_text is not None:
            self.ensure_extra_base(data)
        self.measure_speed(data["base"], c.model, "base")
        save_results(c, data)
        for entry in todo:
            record = data["entries"].get(entry.key)
            if needs_run(record, entry):
                if entry.status == "ok":
                    entry = self.run_entry(entry, base, im)
                record = data["entries"][entry.key] = asdict(entry)
                save_results(c, data)
            if record["status"] == "ok" and record["file"]:
                self.measure_extra(record, c.resolved(record["file"]), entry.key)
                self.measure_speed(record, c.resolved(record["file"]), entry.key)
                if not c.keep_files:
                    c.resolved(record["file"]).unlink(missing_ok=True)
                save_results(c, data)
        return data
