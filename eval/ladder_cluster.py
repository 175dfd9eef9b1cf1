"""`lowbit ladder --cluster`: the ladder's entries as tasks on a Dask cluster (eval/cluster.py).

Where things run:
  * here, on the machine that starts the run: the list of entries, results.json (rewritten after
    each finished entry, as a local run does, so an interrupted run resumes, here or on the
    cluster), the allocation of lowbit's mixes (their sensitivity measured on the cluster,
    eval/sensitivity_cluster.py), and the report;
  * on the workers: the importance matrix when it is collected from --calib, the base
    perplexity, and each entry: quantized into the worker's scratch directory, its perplexity
    and KLD measured, the file deleted.

The KLD base (the source model's distributions on the text: 2 bytes per vocabulary entry and
scored token, 1.5 GB for Qwen2.5's 151,936 tokens over 20 chunks of 512) is not sent to the
workers: each computes it once, when its first entry needs it, keeps it in its cache for the
entries that follow, and deletes it when the ladder is done. That costs one forward pass of the
source over the text per worker (about what one entry's evaluation costs), where sending it
would make every worker wait for one machine to compute it and then move gigabytes through the
cluster for each; and base and entry then come from the same arithmetic on the same machine, so
an entry that reproduces the source measures 0 on any worker.

Speed is not measured: figures from machines that differ are not a column. The quality fields
(size, bits per weight, PPL, KLD) equal a local run's on the same kind of machine.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from lowbit.quant import imatrix as imx
from lowbit.quant.errors import LowbitError
from lowbit.quant.gguffile import open_gguf
from lowbit.quant.jit_cache import cache_dir
from lowbit.quant.recipes import PlanOptions

from .cluster import RemoteModel, scratch_folder, task
from .ladder import (Entry, Evaluation, Ladder, LadderError, entries_to_run, entry_file_name, load_results,
                     measure_entry, needs_run, save_results)
from .loading import write_atomically
from .perplexity import PerplexityResult


@dataclass(frozen=True)
class LadderJob:
    """What every entry task needs, sent to each worker once."""
    model: RemoteModel
    text: str                        # the evaluation text itself
    text_name: str
    n_ctx: int
    chunks: int | None
    imatrix: bytes | None            # the importance matrix file's bytes
    imatrix_label: str               # the path a local run records in the files' metadata

    @property
    def base_key(self) -> str:
        h = hashlib.sha256(f"{self.model}|{self.n_ctx}|{self.chunks}|{self.text_name}".encode())
        h.update(self.text.encode())
        return h.hexdigest()[:24]


def _base_dir() -> Path:
    return cache_dir() / "ladder-base"


def _worker_base(job: LadderJob, model_path: Path) -> tuple[Path, PerplexityResult]:
    """This worker's base distributions (computed by the first task that needs them; the worker
    processes of one machine share them, a file lock making one compute while the others wait)."""
    from .kld import write_base
    from .loading import load_model
    d = _base_dir()
    d.mkdir(parents=True, exist_ok=True)
    path, meta = d / f"{job.base_key}.kld", d / f"{job.base_key}.json"
    with open(d / f"{job.base_key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path.exists() and meta.exists()):
            model, tok = load_model(model_path)
            res = write_base(model, tok, job.text, job.text_name, path, job.n_ctx, job.chunks)
            write_atomically(meta, json.dumps(asdict(res)))
        return path, PerplexityResult(**json.loads(meta.read_text()))


def drop_base(key: str) -> None:
    """Run on every worker when a ladder is done: its base distributions and their lock."""
    for suffix in (".kld", ".json", ".lock"):
        (_base_dir() / f"{key}{suffix}").unlink(missing_ok=True)


@lru_cache(maxsize=1)
def _imatrix(data: bytes) -> imx.ImportanceMatrix:
    with scratch_folder() as d:
        path = d / "imatrix.gguf"
        path.write_bytes(data)
        return imx.load(path)


@task
def base_task(job: LadderJob) -> PerplexityResult:
    return _worker_base(job, job.model.local_path())[1]


@task
def entry_task(job: LadderJob, entry: Entry, opts: PlanOptions, default: str | None) -> Entry:
    path = job.model.local_path()
    base, _ = _worker_base(job, path)
    im = _imatrix(job.imatrix) if entry.imatrix else None
    with scratch_folder() as d:
        entry = measure_entry(entry, open_gguf(path), d / entry_file_name(path, entry), opts, default, im,
                              job.imatrix_label, Evaluation(job.text, base, job.n_ctx, job.chunks), lambda s: None)
    entry.file = ""                  # measured and deleted: no file to keep or to time
    return entry


@task
def imatrix_task(model: RemoteModel, text: str, text_name: str, n_ctx: int, chunks: int | None) -> bytes:
    from .imatrix_collect import collect_imatrix
    from .loading import load_model
    m, tok = load_model(model.local_path())
    im = collect_imatrix(m, tok, text, text_name, n_ctx, chunks)
    with scratch_folder() as d:
        path = d / "imatrix.gguf"
        imx.save(im, path)
        return path.read_bytes()


def collect_imatrix_on_cluster(ladder: Ladder, path: Path) -> None:
    """The ladder's importance matrix from --calib, collected by a worker, saved at `path`."""
    from .loading import read_text
    c, cluster = ladder.cfg, ladder.cluster
    [data] = cluster.gather([cluster.submit(imatrix_task, RemoteModel.of(c.model), read_text(c.calib_text),
                                            str(c.calib_text), c.n_ctx, c.calib_chunks)])
    write_atomically(path, data)


def run_on_cluster(ladder: Ladder) -> dict:
    c, cluster, stage = ladder.cfg, ladder.cluster, ladder.stage
    if c.llama_quantize is not None or c.extra_text is not None or c.methods:
        raise LadderError("--llama-quantize, --extra-text and --methods run on this machine only: leave out --cluster")
    todo = entries_to_run(c)
    if not c.out_dir.is_dir():
        c.out_dir.mkdir(parents=True)
    data = load_results(c)
    im_path = ladder.ensure_imatrix() if any(e.imatrix for e in todo) else None
    im = imx.load(im_path) if im_path else None
    job = LadderJob(RemoteModel.of(c.model), ladder._eval_text(), c.eval_text.name, c.n_ctx, c.chunks,
                    im_path.read_bytes() if im_path else None, str(c.imatrix_path()))
    shared = cluster.share(job)
    src = open_gguf(c.model)
    tasks = {}                       # future -> the entry it measures (None: the base)
    if not data.get("base"):
        tasks[cluster.submit(base_task, shared, priority=1)] = None
    for entry in todo:
        record = data["entries"].get(entry.key)
        if not needs_run(record, entry):
            continue
        if entry.status == "ok":
            try:
                # the plan of a mix measures the sensitivity first (on the cluster, or from the cache)
                opts, default = ladder.entry_plan(entry, src, im)
            except LowbitError as e:
                entry.status = f"failed: {e}"
            else:
                tasks[cluster.submit(entry_task, shared, entry, opts, default)] = entry
                continue
        data["entries"][entry.key] = asdict(entry)
    save_results(c, data)
    stage(f"{len(tasks)} tasks on {cluster.n_workers()} workers")
    with cluster.as_completed(list(tasks)) as finished:
        for future, result in finished:
            entry = tasks[future]
            if entry is None:
                data["base"] = ladder.base_record(result)
            else:
                data["entries"][entry.key] = asdict(result)
            save_results(c, data)
            stage(f"{'base' if entry is None else entry.key} measured")
    cluster.on_every_worker(drop_base, job.base_key)
    return data
