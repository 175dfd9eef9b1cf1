"""--cluster: the ladder and the sensitivity measurement on a Dask cluster the test starts here
(two worker processes), against the same work done in this process."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

distributed = pytest.importorskip("distributed", reason="the cluster mode needs Dask distributed (lowbit[test])")

from lowbit.eval import ladder as L
from lowbit.eval.cluster import Cluster, ClusterError, RemoteModel, code_digest

from synthetic import build_model

TEXT = "the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 30
QUALITY = ("status", "type", "imatrix", "file_bytes", "n_params", "bpw", "type_bpw", "type_share", "type_counts",
           "ppl", "ppl_error", "kld")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one numba thread each; stopped with every process it started."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                     env={"NUMBA_NUM_THREADS": "1"})
    c = Cluster(distributed.Client(local, set_as_default=False))
    yield c
    c.close()
    local.close()
    deadline = time.monotonic() + 20
    while True:
        left = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                and "resource_tracker" not in " ".join(p.cmdline())]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"the cluster left processes behind: {[p.cmdline() for p in left]}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lowbit.eval.imatrix_collect import collect_imatrix
    from lowbit.eval.loading import load_model
    from lowbit.quant import imatrix as imx
    d = tmp_path_factory.mktemp("cluster")
    model = build_model(d / "m.gguf", "llama", "F16", embd_type="F16")
    text = d / "t.txt"
    text.write_text(TEXT)
    m, tok = load_model(model)
    imx.save(collect_imatrix(m, tok, TEXT, str(text), 32, 4), d / "m.imatrix")
    return model, text, d / "m.imatrix"


def config(setup, out, **kw):
    model, text, im = setup
    return L.LadderConfig(model=model, eval_text=text, out_dir=out, types=["Q4_K_M", "IQ2_XXS"], imatrix=im,
                          calib_text=text, with_and_without=True, n_ctx=32, chunks=3, threads=1, bench_prompt=0,
                          bench_gen=0, allocate=[4.5], sensitivity_tokens=64, **kw)


def quality(data):
    return ({k: {f: e[f] for f in QUALITY} for k, e in data["entries"].items()},
            {f: data["base"][f] for f in ("file_bytes", "ppl", "ppl_error", "chunks")})


def test_ladder_on_a_cluster_equals_the_local_run_and_resumes_either_way(setup, cluster, tmp_path, monkeypatch):
    local = L.Ladder(config(setup, tmp_path / "local")).run()

    class Stop(Exception):
        pass

    def stop_after_first_entry(stage):
        if stage.endswith("measured") and not stage.startswith("base"):
            raise Stop   # the user stops the run when one entry is done
    out = tmp_path / "cluster"
    with pytest.raises(Stop):
        L.Ladder(config(setup, out), stop_after_first_entry, cluster=cluster).run()
    first = json.loads((out / "results.json").read_text())
    done = [k for k, e in first["entries"].items() if e["status"] == "ok"]
    assert len(done) == 1
    shutil.copytree(out, tmp_path / "resumed-here")   # the same state, to resume without the cluster

    stages = []
    data = L.Ladder(config(setup, out), stages.append, cluster=cluster).run()
    assert not any(s.startswith(done[0]) for s in stages)   # a finished entry is not sent again
    assert quality(data) == quality(local)
    assert data["entries"]["alloc-4.5bpw/imatrix"]["status"] == "ok"
    assert data["entries"]["IQ2_XXS/none"]["status"] == "requires imatrix"
    assert all(e["file"] == "" and e["speed"] == {} for e in data["entries"].values())  # quality only
    assert not list(out.glob("*.gguf")) and (out / "alloc-4.5bpw.recipe").exists()
    assert (out / "alloc-4.5bpw.recipe").read_text() == (tmp_path / "local" / "alloc-4.5bpw.recipe").read_text()

    calls = []
    real = L.Ladder.run_entry
    monkeypatch.setattr(L.Ladder, "run_entry", lambda self, *a: calls.append(a[0].key) or real(self, *a))
    here = L.Ladder(config(setup, tmp_path / "resumed-here")).run()
    assert done[0] not in calls and len(calls) == 3
    assert quality(here) == quality(local)

    # what the workers kept for the run (the base distributions; they share this machine's
    # cache directory) is gone once it is done
    from lowbit.eval.ladder_cluster import _base_dir
    assert not list(_base_dir().glob("*"))


def test_sensitivity_on_a_cluster_equals_the_local_table(setup, cluster):
    from lowbit.eval.sensitivity import build_table
    from lowbit.eval.sensitivity_cluster import build_table_on_cluster
    from lowbit.quant import imatrix as imx
    from lowbit.quant.gguffile import open_gguf
    from lowbit.runtime.model import Model
    model, _, im_path = setup
    src, im = open_gguf(model), imx.load(im_path)
    sample = np.arange(2, 50)
    steps = []
    kw = dict(candidates=["Q2_K", "IQ4_XS", "Q4_K", "Q8_0"])
    there = build_table_on_cluster(cluster, src, im, sample, progress=steps.append, **kw).to_json()
    here = build_table(src, Model(src), im, sample, **kw).to_json()
    there["seconds"] = here["seconds"] = 0
    assert there == here and there["rank_correlation"]["pairs"] > 0
    assert len(steps) == len(there["tensors"]) + there["rank_correlation"]["pairs"]


def lowbit(*args):
    return subprocess.run([sys.executable, "-m", "lowbit.eval.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_cli_runs_on_the_cluster(setup, cluster, tmp_path):
    model, text, im = setup
    out = tmp_path / "lad"
    done = lowbit("ladder", model, "-f", text, "--imatrix", im, "--types", "Q8_0", "-o", out, "-c", "32",
                  "--chunks", "2", "--cluster", cluster.address)
    assert done.returncode == 0, done.stderr
    report = (out / "report.md").read_text()
    assert "| Q8_0 | yes |" in report and "Dask cluster of 2 workers" in report and "speed not measured" in report
    recipe = tmp_path / "m.recipe"
    done = lowbit("quantize", model, tmp_path / "m.gguf", "--target-bpw", "5", "--imatrix", im, "--calib", text,
                  "--sensitivity-tokens", "40", "--candidates", "Q4_K,Q8_0", "--write-recipe", recipe, "--dry-run",
                  "--cluster", cluster.address)
    assert done.returncode == 0, done.stderr
    assert recipe.exists() and "held-out Spearman" in done.stdout


def test_cluster_refusals(setup, tmp_path):
    model, text, im = setup
    done = lowbit("quantize", model, tmp_path / "x.gguf", "Q8_0", "--cluster", "tcp://127.0.0.1:9")
    assert done.returncode == 1 and "--cluster goes with --target-bpw" in done.stderr
    with pytest.raises(ClusterError, match="no Dask scheduler answers at tcp://127.0.0.1:9"):
        Cluster.connect("tcp://127.0.0.1:9", timeout=1)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as empty:
        with pytest.raises(ClusterError, match="has no workers"):
            Cluster.connect(empty.scheduler_address, timeout=1)


def test_workers_find_the_model_by_store_name_or_shared_path(tmp_path, monkeypatch):
    from lowbit.eval.model_store import KNOWN_MODELS, cached_path
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    stored = cached_path("smollm2-135m")
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"GGUF" + bytes(60))
    ref = RemoteModel.of(stored)
    assert ref.ref == "smollm2-135m" and ref.local_path() == stored and "smollm2-135m" in KNOWN_MODELS
    other = tmp_path / "m.gguf"
    other.write_bytes(b"GGUF" + bytes(10))
    assert RemoteModel.of(other).ref == str(other.resolve())
    with pytest.raises(ClusterError, match="cannot read .*shares"):
        RemoteModel(str(tmp_path / "elsewhere.gguf"), 14, code_digest()).local_path()
    with pytest.raises(ClusterError, match="has another file"):
        RemoteModel(str(other), 15, code_digest()).local_path()
    with pytest.raises(ClusterError, match="runs other code"):
        RemoteModel(str(other), 14, "0" * 16).local_path()
