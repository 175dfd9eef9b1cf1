"""Dynamic quantization: the allocator, the sensitivity table, recipes, and their refusals."""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.quant.allocate import AllocationError, Candidate, allocate, lower_hull, read_recipe, write_recipe

from conftest import lowbit
from synthetic import build_model

CANDIDATES = "Q2_K,IQ4_XS,Q4_K,Q6_K,Q8_0"   # a few, to keep the test's encoding and JIT short
TEXT = "the cat sat on the mat and then the dog ate the cat. a bird sang on the tree. " * 30


def brute_force(cands, budget):
    import itertools
    names = list(cands)
    best = None
    for combo in itertools.product(*(cands[n] for n in names)):
        size = sum(c.n_bytes for c in combo)
        cost = sum(c.cost for c in combo)
        if size <= budget and (best is None or cost < best[0]):
            best = (cost, combo)
    return best[0]


def test_lower_hull_drops_dominated_and_concave_points():
    c = [Candidate("a", 10, 5.0), Candidate("b", 20, 4.9), Candidate("c", 30, 1.0),
         Candidate("d", 40, 1.5), Candidate("e", 50, 0.5)]
    assert [x.type for x in lower_hull(c)] == ["a", "c", "e"]


def test_allocation_is_near_the_brute_force_optimum(rng):
    for _ in range(30):
        cands = {}
        for t in range(5):
            sizes = np.sort(rng.integers(10, 100, 4))
            costs = np.sort(rng.random(4))[::-1] * rng.random() * 10
            cands[f"t{t}"] = [Candidate(f"q{i}", int(s), float(c)) for i, (s, c) in enumerate(zip(sizes, costs))]
        smallest = sum(min(c.n_bytes for c in v) for v in cands.values())
        budget = int(smallest + rng.integers(0, 200))
        chosen = allocate(cands, budget)
        assert sum(c.n_bytes for c in chosen.values()) <= budget
        got = sum(c.cost for c in chosen.values())
        best = brute_force(cands, budget)
        assert got <= best * 1.25 + 1e-9   # greedy on the hull plus the fill: close to optimal


def test_budget_below_the_smallest_types_is_refused():
    with pytest.raises(AllocationError, match="below"):
        allocate({"t": [Candidate("q", 100, 1.0)]}, 99)


def test_recipe_round_trip_and_bad_lines(tmp_path):
    p = tmp_path / "r.recipe"
    write_recipe(p, [("blk.0.attn_q.weight", "Q4_K", "1.0 MiB"), ("token_embd.weight", "Q8_0", "")], ["made here"])
    assert read_recipe(p) == {"blk.0.attn_q.weight": "Q4_K", "token_embd.weight": "Q8_0"}
    p.write_text("blk.0.attn_q.weight\n")
    with pytest.raises(AllocationError, match="line 1"):
        read_recipe(p)
    with pytest.raises(AllocationError, match="does not exist"):
        read_recipe(tmp_path / "none.recipe")


@pytest.fixture(scope="module")
def model_and_imatrix(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    model = build_model(d / "m.gguf", "llama", "F16", embd_type="F16", n_layer=2)
    text = d / "t.txt"
    text.write_text(TEXT)
    im = d / "m.imatrix"
    done = lowbit("imatrix", model, "-f", text, "-o", im, "-c", "32", "--chunks", "4")
    assert done.returncode == 0, done.stderr
    return model, text, im


def test_target_bpw_dry_run_recipe_gives_the_identical_file(model_and_imatrix, tmp_path):
    model, text, im = model_and_imatrix
    out = tmp_path / "a.gguf"
    recipe = tmp_path / "a.recipe"
    common = ["--imatrix", im, "--calib", text, "--sensitivity-tokens", "64", "--candidates", CANDIDATES]
    done = lowbit("quantize", model, out, "--target-bpw", "4.5", *common, "--write-recipe", recipe, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "held-out Spearman" in done.stdout and recipe.exists() and not out.exists()
    plan = read_recipe(recipe)
    assert len(plan) == 2 * 7 + 1 and len(set(plan.values())) > 1   # a mix, not one type
    done = lowbit("quantize", model, out, "--target-bpw", "4.5", *common, "--write-recipe", tmp_path / "b.recipe")
    assert done.returncode == 0, done.stderr
    bpw = float(done.stdout.split(" bits per weight")[0].rsplit(" ", 1)[1])
    assert bpw <= 4.5
    again = tmp_path / "again.gguf"
    done = lowbit("quantize", model, again, "--recipe", recipe, "--imatrix", im)
    assert done.returncode == 0, done.stderr
    assert again.read_bytes() == out.read_bytes()
    # more bits, lower predicted cost
    low = read_recipe(tmp_path / "b.recipe")
    done = lowbit("quantize", model, out, "--target-bpw", "7", *common, "--write-recipe", tmp_path / "c.recipe", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert read_recipe(tmp_path / "c.recipe") != low


def test_bad_budgets_and_recipes_are_refused(model_and_imatrix, tmp_path):
    model, text, im = model_and_imatrix
    out = tmp_path / "x.gguf"
    common = ["--imatrix", im, "--calib", text, "--sensitivity-tokens", "64", "--candidates", CANDIDATES]
    cases = [
        (["--target-bpw", "1.0", *common], "below what the smallest types allow"),
        (["--target-bpw", "4", "--imatrix", im], "need --imatrix FILE and --calib TEXT"),
        (["Q4_K", "--target-bpw", "4", *common], "give one of TYPE"),
    ]
    bad = tmp_path / "bad.recipe"
    bad.write_text("blk.0.attn_q.weight Q4_K\nblk.9.ffn_up.weight Q4_K\n")
    cases.append((["--recipe", bad], "which the model does not have"))
    short = tmp_path / "short.recipe"
    short.write_text("blk.0.attn_q.weight Q4_K\n")
    cases.append((["--recipe", short], "does not name"))
    for args, fragment in cases:
        done = lowbit("quantize", model, out, *args)
        assert done.returncode == 1 and fragment in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and not out.exists()
    # a quantized source is refused before the sensitivity is measured, and no recipe is written
    quantized = tmp_path / "q8.gguf"
    assert lowbit("quantize", model, quantized, "Q8_0").returncode == 0
    recipe = tmp_path / "q8.recipe"
    done = lowbit("quantize", quantized, out, "--target-bpw", "6", *common, "--write-recipe", recipe)
    assert done.returncode == 1 and "--allow-requantize" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not out.exists() and not recipe.exists()


def test_recipe_type_the_rows_cannot_take():
    from lowbit.quant.recipes import RecipeError, plan_from_recipe
    shapes = [("blk.0.ffn_down.weight", (64, 96)), ("blk.0.ffn_norm.weight", (64,))]
    assert plan_from_recipe(shapes, {"blk.0.ffn_down.weight": "Q4_0"})[0].qtype.name == "Q4_0"
    with pytest.raises(RecipeError, match="cannot take"):
        plan_from_recipe(shapes, {"blk.0.ffn_down.weight": "IQ2_XS"})
    with pytest.raises(RecipeError, match="unknown type"):
        plan_from_recipe(shapes, {"blk.0.ffn_down.weight": "Q9"})


def test_probe_reaches_every_weight_and_restores_it(tmp_path):
    from lowbit.eval.sensitivity import SensitivityProbe
    from lowbit.quant.decode import dequantize
    from lowbit.quant.encode import quantize
    from lowbit.quant.types import by_name
    from lowbit.runtime.model import Model
    model = Model.load(build_model(tmp_path / "m.gguf", "llama", "F16", embd_type="F16", n_layer=1))
    probe = SensitivityProbe(model, np.arange(2, 40))
    q2k = by_name("Q2_K")
    names = [n for n, t in model.gguf.tensors.items() if len(t.shape) == 2]
    assert "blk.0.ffn_up.weight" in names and "token_embd.weight" in names
    for name in names:
        t = model.gguf.tensors[name]
        w = dequantize(model.gguf.raw(name), t.qtype, t.shape)
        assert probe.kld_with(name, quantize(w, q2k), q2k) > 1e-6, name  # the swap took effect
    again = SensitivityProbe(model, np.arange(2, 40)).base
    np.testing.assert_array_equal(again, probe.base)                       # and was undone
