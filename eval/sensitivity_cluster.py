"""The sensitivity table measured on a cluster (eval/cluster.py): a task per tensor and a task
per held-out pair.

The random choices (row samples, held-out pairs) are made here, before anything is sent
(sensitivity.plan_measurements), and each task carries its tensor's importance vector; so the
table equals the one measured in one process (sensitivity.build_table). Each worker process
loads the model and runs the unquantized forward pass over the sample once, then measures every
tensor it is given against it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lowbit.quant.gguffile import GGUFFile, open_gguf
from lowbit.quant.imatrix import ImportanceMatrix

from .cluster import Cluster, RemoteModel, task
from .kld import fingerprint
from .sensitivity import (SensitivityProbe, SensitivityTable, TensorCosts, TensorTask, assemble, measure_pair,
                          measure_tensor, plan_measurements)


@dataclass(frozen=True)
class ProbeJob:
    model: RemoteModel
    sample: np.ndarray               # the calibration tokens every measurement runs


_probes: dict = {}                   # this worker process's probe: (model, sample) -> (src, probe)


def _probe(job: ProbeJob) -> tuple[GGUFFile, SensitivityProbe]:
    from lowbit.runtime.model import Model
    key = (job.model, fingerprint(job.sample))
    if key not in _probes:
        _probes.clear()              # one model at a time: a worker's memory holds one
        src = open_gguf(job.model.local_path())
        _probes[key] = (src, SensitivityProbe(Model(src), job.sample))
    return _probes[key]


@task
def tensor_costs(job: ProbeJob, t: TensorTask) -> TensorCosts:
    return measure_tensor(*_probe(job), t)


@task
def held_out_kld(job: ProbeJob, t: TensorTask, qtype: str) -> float:
    return measure_pair(*_probe(job), t, qtype)


def build_table_on_cluster(cluster: Cluster, src: GGUFFile, im: ImportanceMatrix, sample: np.ndarray,
                           seed: int = 0, progress: Callable[[str], None] = lambda s: None,
                           candidates: list[str] | None = None, mode: str = "tensor") -> SensitivityTable:
    start = time.perf_counter()
    plan = plan_measurements(src, im, seed, candidates, mode)
    job = cluster.share(ProbeJob(RemoteModel.of(src.path), np.ascontiguousarray(sample, dtype=np.int64)))
    futures = ([cluster.submit(tensor_costs, job, t) for t in plan.tensors]
               + [cluster.submit(held_out_kld, job, plan.tensors[k], q) for k, q in plan.held_out])
    n = len(plan.tensors)
    results = cluster.gather(futures, done=lambda k, total: progress(f"measured {k}/{total} on the cluster"))
    return assemble(src, plan, results[:n], results[n:], len(sample), time.perf_counter() - start, mode)
