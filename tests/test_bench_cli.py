"""`lowbit bench` on a tiny synthetic model: the table, the JSON, and bad input. No speed asserted."""
from __future__ import annotations

import json

import pytest

from conftest import assert_one_sentence, lowbit
from synthetic import build_model

from lowbit.eval.speed import BenchError, parse_count, parse_counts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return (build_model(d / "a.gguf", "llama", "Q4_0"),
            build_model(d / "b.gguf", "qwen2", "Q8_0", n_layer=1, seed=1))


def bench(*args):
    return lowbit("bench", *args)


def table_rows(stdout: str) -> list[list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_one_table_for_several_models(models):
    done = bench(*models, "-p", "16", "-n", "4", "-r", "2", "-t", "1", "--no-startup")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert rows[0] == ["model", "size", "params", "type", "threads", "test", "t/s"]
    assert set(rows[1][0]) <= set("-") and rows[1][-1].endswith(":")
    body = rows[2:]
    assert [(r[0].split()[0], r[3], r[4], r[5]) for r in body] == [
        ("llama", "Q4_0", "1", "pp16"), ("llama", "Q4_0", "1", "tg4"),
        ("qwen2", "Q8_0", "1", "pp16"), ("qwen2", "Q8_0", "1", "tg4")]
    for r in body:
        mean, std = r[6].split(" ± ")
        assert float(mean) > 0 and float(std) >= 0
        assert r[1].endswith("MiB") and r[2].endswith(" M")
    after = done.stdout.split("\n\n", 1)[1]
    assert after.count("memory ") == 2 and "MiB resident after imports" in after
    assert after.count("x the file (") == 2
    assert "machine:" in after and "numba 1 threads" in after
    assert "activations: fast (one int8 plane per block of 32)" in after
    assert "start-up" not in after


def test_json_with_startup(models):
    done = bench(models[0], "-p", "8", "-n", "0", "-r", "1", "-t", "1", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["test"] for r in results] == ["pp8"]
    r = results[0]
    assert r["n_prompt"] == 8 and r["n_gen"] == 0 and r["n_threads"] == 1 and r["reps"] == 1
    assert len(r["samples_ns"]) == 1 and r["avg_ts"] > 0 and r["stddev_ts"] == 0
    assert r["model_n_params"] > 0 and r["model_size"] > 0 and r["file_type"] == "Q4_0"
    assert r["memory"]["peak_rss"] >= r["memory"]["rss_after_imports"] > 0
    (start,) = r["startup"]
    assert start["cache"] in ("warm", "partly warm", "cold") and start["kernels_compiled"] >= 0
    assert start["first_decode_seconds"] >= start["first_token_seconds"] >= start["load_seconds"] > 0
    if r["blas"] is not None:
        assert r["n_blas_threads"] == 1


def test_cold_startup_uses_an_empty_cache(models):
    done = bench(models[1], "-p", "4", "-n", "0", "-r", "1", "-t", "1", "--cold", "--json")
    assert done.returncode == 0, done.stderr
    as_is, cold = json.loads(done.stdout)[0]["startup"]
    assert cold["cache"].startswith("empty") and cold["kernels_compiled"] > 0
    assert as_is["cache"] in ("warm", "partly warm", "cold")


def test_generation_only(models):
    done = bench(models[1], "-p", "0", "-n", "3", "-r", "1", "-t", "1", "--no-startup")
    assert done.returncode == 0, done.stderr
    assert [r[5] for r in table_rows(done.stdout)[2:]] == ["tg3"]


@pytest.mark.parametrize("args, fragment", [
    (["missing.gguf"], "does not exist"),
    (["no-such-model"], "neither a file nor a known model"),
    (["{m}", "-p", "-5"], "-p must be at least 0"),
    (["{m}", "-n", "x"], "-n takes whole numbers"),
    (["{m}", "-t", "999"], "-t must be between"),
    (["{m}", "-t", "0"], "-t must be between"),
    (["{m}", "-r", "0"], "-r must be at least 1"),
    (["{m}", "-r", "2,3"], "-r takes one whole number"),
    (["{m}", "-p", "0", "-n", "0"], "nothing to measure"),
    (["{m}", "--blas-threads", "0"], "--blas-threads must be at least 1"),
    (["{m}", "--blas-threads", "9999"], "--blas-threads must be between"),
])
def test_bad_input(models, args, fragment):
    assert_one_sentence(bench(*[a.format(m=models[0]) for a in args]), fragment)


def test_unsupported_architecture_fails_before_running(tmp_path, models):
    import numpy as np
    from lowbit.quant.types import by_name
    from synthetic import write_gguf
    bad = write_gguf(tmp_path / "x.gguf", {"x": (np.zeros(4, np.float32), by_name("F32"))}, arch="mamba")
    done = bench(models[0], bad, "-p", "4", "-n", "0", "-r", "1")
    assert_one_sentence(done, "architecture 'mamba' is not supported")
    assert done.stdout == ""


def test_parse_counts():
    assert parse_counts("512", "-p", 0) == [512]
    assert parse_counts("1, 2,2", "-t") == [1, 2]
    assert parse_count("3", "-r", 1) == 3
    with pytest.raises(BenchError):
        parse_counts("1,,2", "-t")


def test_exact_activations_on_request(models):
    done = bench(models[1], "-p", "8", "-n", "2", "-r", "1", "-t", "1", "--no-startup", "--exact", "--json")
    assert done.returncode == 0, done.stderr
    assert {r["precision"] for r in json.loads(done.stdout)} == {"exact"}
    both = bench(models[1], "--exact", "--fast")
    assert both.returncode != 0 and "not allowed with argument" in both.stderr


@pytest.mark.real
def test_qwen_resident_memory_is_at_most_130_percent_of_the_file():
    # The whole process's peak above the post-import baseline (file-backed pages of the map
    # included) while the 1.5B model is loaded, repacked and run
    from conftest import real_model
    path = real_model("qwen2.5-coder-1.5b")
    done = bench(path, "-p", "64", "-n", "4", "-r", "1", "-t", "2", "--no-startup", "--json")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)[0]
    assert r["memory"]["peak_is_per_model"]
    assert r["memory"]["peak_above_imports"] <= 1.3 * r["model_size"], r["memory"]
