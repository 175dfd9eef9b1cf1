"""--cluster: the ladder and the sensitivity measurement on a Dask cluster the test starts here
(two worker processes), against the same work done in this process."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the cluster mode needs Dask distributed (lowbit[test])")
import psutil  # noqa: E402  (a dependency of distributed)

from lowbit.eval import ladder as L  # noqa: E402
from lowbit.eval import sensitivity as S  # noqa: E402
from lowbit.eval.cli import main as lowbit  # noqa: E402
from lowbit.eval.cluster import Cluster, ClusterError, RemoteModel, code_digest  # noqa: E402
from lowbit.eval.ladder_cluster import _base_dir  # noqa: E402

from synthetic import build_model  # noqa: E402

TEXT = "the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 30
QUALITY = ("status", "type", "imatrix", "file_bytes", "n_params", "bpw", "type_bpw", "type_share", "type_counts",
           "ppl", "ppl_error", "kld")
FEW_TYPES = ["Q3_K", "Q6_K", "Q8_0"]   # the sensitivity's candidates and held-out pairs: a few, to keep
HELD_OUT = 12                          # the test short
QUIET = {"dashboard_address": None, "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"}}


def own_processes(before: set[int]) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            and "resource_tracker" not in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one numba thread each; stopped with every process it started."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     env={"NUMBA_NUM_THREADS": "1"}, **QUIET)
    c = Cluster(distributed.Client(local, set_as_default=False))
    yield c
    c.close()
    local.close()
    deadline = time.monotonic() + 20
    while (left := own_processes(before)) and time.monotonic() < deadline:
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
    return L.LadderConfig(**{**dict(model=model, eval_text=text, out_dir=out, types=["Q4_K_M"],
                                    imatrix=im, calib_text=text, with_and_without=True, n_ctx=32, chunks=3,
                                    calib_chunks=4, threads=1, bench_prompt=0, bench_gen=0, allocate=[4.5],
                                    sensitivity_tokens=64), **kw})


def quality(data):
    return ({k: {f: e[f] for f in QUALITY} for k, e in data["entries"].items()},
            {f: data["base"][f] for f in ("file_bytes", "ppl", "ppl_error", "chunks")})


def sensitivity_cache(monkeypatch, d):
    """Sensitivity tables cached in d: each run below measures its own."""
    monkeypatch.setattr(S, "cache_dir", lambda: d)
    return d / "sensitivity"


def test_ladder_on_a_cluster_equals_the_local_run_and_resumes_either_way(setup, cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "CANDIDATES", FEW_TYPES)
    monkeypatch.setattr(S, "HELD_OUT", HELD_OUT)
    bases_before = set(_base_dir().glob("*"))
    here_tables = sensitivity_cache(monkeypatch, tmp_path / "cache-here")
    local = L.Ladder(config(setup, tmp_path / "local")).run()

    class Stop(Exception):
        pass

    def stop_after_first_entry(stage):
        if stage.endswith("measured") and not stage.startswith("base"):
            raise Stop   # the user stops the run when one entry is done
    out = tmp_path / "cluster"
    there_tables = sensitivity_cache(monkeypatch, tmp_path / "cache-there")
    with pytest.raises(Stop):
        L.Ladder(config(setup, out), stop_after_first_entry, cluster=cluster).run()
    first = json.loads((out / "results.json").read_text())
    done = [k for k, e in first["entries"].items() if e["status"] == "ok"]
    assert len(done) == 1

    stages = []
    data = L.Ladder(config(setup, out), stages.append, cluster=cluster).run()
    assert not any(s.startswith(done[0]) for s in stages)   # a finished entry is not sent again
    assert quality(data) == quality(local)
    assert data["entries"]["alloc-4.5bpw/imatrix"]["status"] == "ok"
    assert all(e["file"] == "" and e["speed"] == {} for e in data["entries"].values())  # quality only
    assert not list(out.glob("*.gguf"))
    # the allocation's sensitivity was measured on the cluster, and equals the one measured here
    [here], [there] = (list(d.glob("*.json")) for d in (here_tables, there_tables))
    here, there = json.loads(here.read_text()), json.loads(there.read_text())
    for table in (here, there):     # everything but the times
        table["seconds"] = 0
        for t in table["tensors"]:
            t["error_seconds"] = t["probe_seconds"] = 0
    assert here == there and there["rank_correlation"]["pairs"] == HELD_OUT
    assert (out / "alloc-4.5bpw.recipe").read_text() == (tmp_path / "local" / "alloc-4.5bpw.recipe").read_text()

    # the cluster's results resume here: one entry taken out is measured again, nothing else
    resumed = tmp_path / "resumed-here"
    shutil.copytree(out, resumed)
    data = json.loads((resumed / "results.json").read_text())
    del data["entries"]["Q4_K_M/none"]
    (resumed / "results.json").write_text(json.dumps(data))
    calls = []
    real = L.Ladder.run_entry
    monkeypatch.setattr(L.Ladder, "run_entry", lambda self, *a: calls.append(a[0].key) or real(self, *a))
    here = L.Ladder(config(setup, resumed)).run()
    assert calls == ["Q4_K_M/none"]
    assert quality(here) == quality(local)

    # what the workers kept for the run (the base distributions; they share this machine's
    # cache directory) is gone once it is done
    assert set(_base_dir().glob("*")) <= bases_before


def test_imatrix_collected_on_a_cluster_equals_the_local_one(setup, cluster, tmp_path):
    kw = dict(imatrix=None, types=["Q8_0"], allocate=[])
    here = L.Ladder(config(setup, tmp_path / "here", **kw))
    there = L.Ladder(config(setup, tmp_path / "there", **kw), cluster=cluster)
    for ladder in (here, there):
        ladder.cfg.out_dir.mkdir()
    assert there.ensure_imatrix().read_bytes() == here.ensure_imatrix().read_bytes()


def test_cli_runs_on_the_cluster(setup, cluster, tmp_path, capsys):
    model, text, im = setup
    out = tmp_path / "lad"
    assert lowbit(["ladder", str(model), "-f", str(text), "--imatrix", str(im), "--types", "Q8_0", "-o", str(out),
                   "-c", "32", "--chunks", "2", "--cluster", cluster.address]) == 0
    report = (out / "report.md").read_text()
    assert "| Q8_0 | yes |" in report and "Dask cluster of 2 workers" in report and "speed not measured" in report
    recipe = tmp_path / "m.recipe"
    assert lowbit(["quantize", str(model), str(tmp_path / "m.gguf"), "--target-bpw", "5", "--imatrix", str(im),
                   "--calib", str(text), "--sensitivity-tokens", "40", "--candidates", "Q4_K,Q8_0",
                   "--write-recipe", str(recipe), "--dry-run", "--cluster", cluster.address]) == 0
    assert recipe.exists() and "held-out Spearman" in capsys.readouterr().out


def test_cluster_refusals(setup, tmp_path, capsys):
    model, text, im = setup
    assert lowbit(["quantize", str(model), str(tmp_path / "x.gguf"), "Q8_0", "--cluster", "tcp://127.0.0.1:9"]) == 1
    assert "--cluster goes with --target-bpw" in capsys.readouterr().err
    with pytest.raises(ClusterError, match="no Dask scheduler answers at tcp://127.0.0.1:9"):
        Cluster.connect("tcp://127.0.0.1:9", timeout=1)
    for bad in ("foo", "http://127.0.0.1:1", ""):
        with pytest.raises(ClusterError, match="takes a scheduler's address such as tcp://HOST:8786"):
            Cluster.connect(bad, timeout=1)
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", **QUIET) as empty:
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
