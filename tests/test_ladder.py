"""The ladder: entries measured and reported, resumed after an interruption without recomputing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lowbit.eval import ladder as L
from lowbit.eval.report import _kld_for_plot, pareto

from conftest import assert_one_sentence, lowbit
from synthetic import build_model

TEXT = "the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ladder")
    model = build_model(d / "m.gguf", "llama", "F16", embd_type="F16")
    text = d / "t.txt"
    text.write_text(TEXT)
    return model, text


def config(setup, out, types=("Q4_K_M", "IQ2_XXS")):
    model, text = setup
    return L.LadderConfig(model=model, eval_text=text, out_dir=out, types=list(types), calib_text=text,
                          with_and_without=True, n_ctx=32, chunks=3, calib_chunks=4, threads=1,
                          bench_prompt=8, bench_gen=4, bench_reps=1, allocate=[4.5], sensitivity_tokens=64)


def test_pareto_front():
    pts = [(2.0, 1.0), (3.0, 0.5), (2.5, 2.0), (4.0, 0.5), (1.5, 3.0)]
    assert pareto(pts) == [4, 0, 1]


def test_an_entry_that_reproduces_the_base_is_drawn_at_a_floor():
    rows = [{"kld": {"mean": m}} for m in (3e-7, 0.003, 0.2)]
    y = _kld_for_plot(rows)
    assert [y[id(e)] for e in rows] == [0.001, 0.003, 0.2]


def test_ladder_measures_resumes_and_reports(setup, tmp_path, monkeypatch):
    out = tmp_path / "ladder"
    cfg = config(setup, out)
    calls = {"n": 0}
    real = L.Ladder.run_entry

    def interrupted(self, entry, base, im):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user stops the ladder in the second entry
        return real(self, entry, base, im)

    monkeypatch.setattr(L.Ladder, "run_entry", interrupted)
    with pytest.raises(KeyboardInterrupt):
        L.Ladder(cfg).run()
    first = json.loads((out / "results.json").read_text())
    assert list(first["entries"]) == ["Q4_K_M/imatrix"]

    stages = []
    data = L.Ladder(cfg, stages.append).run()
    # Resumed: the finished entry, the base and the imatrix are not computed again.
    assert calls["n"] == 5 and not any("Q4_K_M/imatrix" in s or "base" in s or "imatrix from" in s
                                      for s in stages)
    e = data["entries"]
    assert set(e) == {"Q4_K_M/imatrix", "Q4_K_M/none", "IQ2_XXS/imatrix", "IQ2_XXS/none", "alloc-4.5bpw/imatrix"}
    mix = e["alloc-4.5bpw/imatrix"]
    assert mix["status"] == "ok" and mix["bpw"] <= 4.5 and len(mix["type_counts"]) > 1
    assert (out / "alloc-4.5bpw.recipe").exists()
    assert e["IQ2_XXS/none"]["status"] == "requires imatrix"
    for key in ("Q4_K_M/imatrix", "Q4_K_M/none", "IQ2_XXS/imatrix"):
        r = e[key]
        assert r["status"] == "ok" and r["ppl"] > 1 and r["kld"]["tokens"] == 3 * 15
        assert r["kld"]["mean"] > 0 and r["speed"]["pp_tps"] > 0 and r["speed"]["tg_tps"] > 0
        assert 0 < r["type_share"] <= 1
    assert e["IQ2_XXS/imatrix"]["type_bpw"] == pytest.approx(2.0625)
    assert e["IQ2_XXS/imatrix"]["bpw"] < e["Q4_K_M/imatrix"]["bpw"]
    assert e["IQ2_XXS/imatrix"]["kld"]["mean"] > e["Q4_K_M/imatrix"]["kld"]["mean"]

    monkeypatch.setattr(L.Ladder, "run_entry", lambda *a: pytest.fail("recomputed a finished entry"))
    assert L.Ladder(cfg).run()["entries"] == e
    # New speed settings re-measure speed only.
    cfg.bench_gen = 2
    again = L.Ladder(cfg).run()["entries"]
    assert again["Q4_K_M/none"]["speed"]["settings"]["tg"] == 2
    assert again["Q4_K_M/none"]["kld"] == e["Q4_K_M/none"]["kld"]


def test_cli_ladder_writes_report_and_plots(setup, tmp_path):
    model, text = setup
    out = tmp_path / "lad"
    done = lowbit("ladder", model, "-f", text, "--calib", text, "--calib-chunks", "4", "--types", "Q8_0,Q3_K_M",
                  "-o", out, "-c", "32", "--chunks", "2", "-t", "1", "--bench-prompt", "8", "--bench-gen", "4",
                  "--bench-reps", "1", "--delete-files")
    assert done.returncode == 0, done.stderr
    report = (out / "report.md").read_text()
    assert "| Q8_0 | yes |" in report and "| Q3_K_M | yes |" in report and "m.gguf on t.txt" in report
    assert (out / "kld_vs_bpw.png").stat().st_size > 10_000 and (out / "speed_vs_bpw.png").exists()
    assert not list(out.glob("m-*.gguf"))  # --delete-files


@pytest.mark.parametrize("args, fragment", [
    (["--types", "Q4_K_M"], "give --imatrix FILE or --calib TEXT"),
    (["--types", "Q4_K_M", "--imatrix", "{text}", "--allocate", "4.5"], "--allocate needs --calib TEXT"),
    (["--types", "Q9_X", "--calib", "{text}"], "unknown type or preset 'Q9_X'"),
    (["--types", "Q4_K_M", "--imatrix", "missing.imatrix"], "missing.imatrix does not exist"),
])
def test_cli_ladder_bad_input(setup, tmp_path, args, fragment):
    model, text = setup
    args = [a.format(text=text) for a in args]
    assert_one_sentence(lowbit("ladder", model, "-f", text, "-o", tmp_path / "x", *args), fragment)


def test_committed_results_resume_with_relative_paths(tmp_path):
    """docs/main-job was made by the README's command: its results.json (paths relative to its
    folder, the model by name) matches that command's settings, so a rerun resumes it."""
    import shutil
    from pathlib import Path

    from lowbit.eval.model_store import cached_path
    committed = Path(__file__).resolve().parent.parent / "docs" / "main-job" / "results.json"
    out = tmp_path / "ladder-smollm2"
    out.mkdir()
    shutil.copy(committed, out / "results.json")
    cfg = L.LadderConfig(model=cached_path("smollm2-135m"), eval_text=Path("wiki.test.raw"), out_dir=out,
                         types=["Q8_0"], calib_text=Path("wiki.valid.raw"), chunks=40)
    assert L.load_results(cfg) == json.loads(committed.read_text())


def test_absolute_paths_of_older_results_become_relative(setup, tmp_path):
    model, text = setup
    out = tmp_path / "old"
    out.mkdir()
    cfg = config(setup, out)
    old = {"settings": {**cfg.settings(), "model": str(model), "imatrix": str(out / "imatrix.gguf")},
           "base": {"file": str(model)}, "entries": {"Q8_0/imatrix": {"file": str(out / "m-Q8_0.gguf")}}}
    (out / "results.json").write_text(json.dumps(old))
    data = L.load_results(cfg)
    assert data["settings"] == cfg.settings() and data["entries"]["Q8_0/imatrix"]["file"] == "m-Q8_0.gguf"


# A stand-in for llama.cpp's llama-quantize that takes its command line (`--allow-requantize
# [--imatrix F] IN OUT TYPE THREADS`) and makes the file with lowbit: the real binary is the
# user's own build, outside CI; this holds how the ladder calls, times and measures it.
STAND_IN = '''#!{python}
import sys
from lowbit.eval.cli import main
args = sys.argv[1:]
assert args.pop(0) == "--allow-requantize"
imatrix = []
if args[0] == "--imatrix":
    imatrix = ["--imatrix", args[1]]
    args = args[2:]
src, out, preset, threads = args
if preset == "{refuse}":
    print("main: invalid ftype " + preset)
    sys.exit(1)
sys.exit(main(["quantize", src, out, preset, "--allow-requantize", "-t", threads] + imatrix))
'''


def stand_in(tmp_path, refuse: str = "none"):
    import os
    import sys
    path = tmp_path / "llama-quantize"
    path.write_text(STAND_IN.format(python=sys.executable, refuse=refuse))
    os.chmod(path, 0o755)
    return path


def test_llama_quantize_entries_beside_lowbit_s(setup, tmp_path):
    out = tmp_path / "both"
    cfg = L.LadderConfig(model=setup[0], eval_text=setup[1], out_dir=out, types=["Q4_K_M", "Q2_K"],
                         calib_text=setup[1], n_ctx=32, chunks=2, calib_chunks=4, threads=1, bench_prompt=0,
                         bench_gen=0, llama_quantize=stand_in(tmp_path, refuse="Q2_K"))
    e = L.Ladder(cfg).run()["entries"]
    assert list(e) == ["Q4_K_M/imatrix", "Q4_K_M/imatrix/llama-quantize", "Q2_K/imatrix",
                       "Q2_K/imatrix/llama-quantize"]
    ours, theirs = e["Q4_K_M/imatrix"], e["Q4_K_M/imatrix/llama-quantize"]
    assert theirs["status"] == "ok" and theirs["quantizer"] == "llama-quantize"
    assert theirs["file"] == "m-Q4_K_M-llama-quantize.gguf" and (out / theirs["file"]).exists()
    # The stand-in quantizes with lowbit: the same file, so the same sizes and the same KLD.
    for key in ("file_bytes", "n_params", "bpw", "type_bpw", "type_share", "type_counts", "kld", "ppl"):
        assert theirs[key] == ours[key], key
    assert theirs["quantize_seconds"] > 0 and ours["quantize_seconds"] > 0
    # Peaks of whole processes: more than the interpreter alone, less than this machine.
    for r in (ours, theirs):
        assert 30 * 2 ** 20 < r["quantize_peak_bytes"] < 64 * 2 ** 30
    refused = e["Q2_K/imatrix/llama-quantize"]["status"]
    assert refused == "failed: llama-quantize Q2_K exited with 1: main: invalid ftype Q2_K"
    assert not (out / "m-Q2_K-llama-quantize.gguf").exists()
    from lowbit.eval.report import markdown
    text = markdown(L.load_results(cfg), "here")
    assert "| Q4_K_M (llama-quantize) | yes |" in text and "## lowbit against llama-quantize" in text
    assert "| Q4_K_M | yes | " in text.split("## lowbit against llama-quantize")[1]


def test_llama_quantize_that_is_not_a_program(setup, tmp_path):
    model, text = setup
    done = lowbit("ladder", model, "-f", text, "--calib", text, "--types", "Q4_K_M", "-o", tmp_path / "x",
                  "--llama-quantize", tmp_path / "nowhere")
    assert_one_sentence(done, "is not an executable file")


def test_second_text_measured_refilled_and_reported(setup, tmp_path):
    model, text = setup
    code = tmp_path / "code.py"
    code.write_text("def f(x):\n    return [i * x for i in range(10) if i % 2]\n\n" * 40)
    out = tmp_path / "two"
    cfg = L.LadderConfig(model=model, eval_text=text, out_dir=out, types=["Q4_K_M"], calib_text=text, n_ctx=32,
                         chunks=2, calib_chunks=4, threads=1, bench_prompt=0, bench_gen=0, extra_text=str(code),
                         extra_chunks=3)
    data = L.Ladder(cfg).run()
    assert data["extra"]["settings"] == {"text": "code.py", "n_ctx": 32, "chunks": 3}
    first = data["entries"]["Q4_K_M/imatrix"]["extra"]
    assert first["kld"]["tokens"] == 3 * 15 and first["kld"]["mean"] > 0 and first["ppl"] > 1
    assert first["kld"] != data["entries"]["Q4_K_M/imatrix"]["kld"]     # another text, other figures
    # Another second text: the base is made again and the kept file measured on it; the main
    # figures stay as they were.
    other = tmp_path / "other.py"
    other.write_text("import os\nprint(os.getcwd())\n" * 60)
    cfg.extra_text = str(other)
    again = L.Ladder(cfg).run()
    assert again["extra"]["settings"]["text"] == "other.py"
    assert again["entries"]["Q4_K_M/imatrix"]["extra"]["kld"] != first["kld"]
    assert again["entries"]["Q4_K_M/imatrix"]["kld"] == data["entries"]["Q4_K_M/imatrix"]["kld"]
    from lowbit.eval.report import markdown
    report = markdown(again, "here")
    assert "Second text: other.py, 3 chunks" in report and "mean KLD, second text |" in report


def test_python_stdlib_sample_is_fixed_and_named():
    from lowbit.eval import code_text
    text = code_text.python_stdlib_sample()
    assert text == code_text.python_stdlib_sample()
    assert text.count("# ---- ") == len(code_text.MODULES) and "# ---- textwrap\n" in text
    assert 60_000 < len(text) <= len(code_text.MODULES) * (code_text.SLICE_BYTES + 40)
    assert code_text.sample_name().startswith("python-stdlib (Python 3.")


def test_mixes_with_and_without_the_source_types_and_their_sensitivity_mode(setup, tmp_path):
    from dataclasses import asdict
    cfg = config(setup, tmp_path / "l", types=("Q4_K_M",))
    cfg.allocate_without_source, cfg.sensitivity_mode = [3.0, 4.5], "kind"
    entries = {e.key: e for e in L.entries_to_run(cfg)}
    assert {"alloc-4.5bpw/imatrix", "alloc-3bpw-nosource/imatrix", "alloc-4.5bpw-nosource/imatrix"} <= set(entries)
    mix = entries["alloc-3bpw-nosource/imatrix"]
    assert mix.sensitivity == "kind" and L.alloc_budget(mix.type) == 3.0
    done = dict(asdict(mix), status="ok")
    assert not L.needs_run(done, mix)
    cfg.sensitivity_mode = "tensor"                   # another mode: the mix is measured again
    again = {e.key: e for e in L.entries_to_run(cfg)}["alloc-3bpw-nosource/imatrix"]
    assert L.needs_run(done, again)
    older = {k: v for k, v in done.items() if k != "sensitivity"}   # before there were modes
    assert not L.needs_run(older, again) and L.needs_run(older, mix)
    preset = entries["Q4_K_M/imatrix"]
    assert not L.needs_run(dict(asdict(preset), status="ok"), preset)
    assert L.needs_run(dict(asdict(preset), status="failed: no"), preset) and L.needs_run(None, preset)


def test_method_entries_are_made_with_the_layer_pass_and_reported(setup, tmp_path):
    """--methods awq,gptq+awq: an entry per preset and method, made through the layer pass (its
    file differs from the plain preset's; the folded norms are in it), with a name, a key, a
    file and a plot curve of its own."""
    from lowbit.eval.report import markdown, write_report
    from lowbit.quant.gguffile import open_gguf
    model, text = setup
    text2 = tmp_path / "calib.txt"
    text2.write_text(TEXT * 8)
    cfg = L.LadderConfig(model=model, eval_text=text, out_dir=tmp_path / "l", types=["Q4_K_M"], calib_text=text2,
                         n_ctx=32, chunks=3, calib_chunks=4, threads=1, bench_prompt=0, bench_gen=0,
                         methods=["awq", "gptq+awq"], pass_chunks=4, pass_held_out=2)
    assert [e.key for e in L.entries_to_run(cfg)] == ["Q4_K_M/imatrix", "Q4_K_M/imatrix/awq",
                                                      "Q4_K_M/imatrix/gptq+awq"]
    data = L.Ladder(cfg).run()
    plain, awq, both = (data["entries"][k] for k in ("Q4_K_M/imatrix", "Q4_K_M/imatrix/awq",
                                                     "Q4_K_M/imatrix/gptq+awq"))
    assert all(e["status"] == "ok" for e in (plain, awq, both))
    assert awq["file"].endswith("-Q4_K_M-awq.gguf") and both["file"].endswith("-Q4_K_M-gptq-awq.gguf")
    files = [open_gguf(cfg.resolved(e["file"])) for e in (plain, awq, both)]
    assert files[0].file_bytes == files[1].file_bytes == files[2].file_bytes
    differ = [n for n in files[0].tensors if not np.array_equal(files[0].raw(n), files[1].raw(n))]
    assert any("norm" in n or n.endswith(".bias") for n in differ), differ    # scales were folded
    assert not list(cfg.out_dir.glob(".lowbit-pass-*"))
    report = markdown(data, "test machine")
    assert "| Q4_K_M +awq | yes |" in report and "| Q4_K_M +gptq+awq | yes |" in report
    write_report(data, cfg.out_dir, "test machine")
    with pytest.raises(L.LadderError, match="unknown method 'spqr'"):
        L.entries_to_run(L.LadderConfig(**{**cfg.__dict__, "methods": ["spqr"]}))
