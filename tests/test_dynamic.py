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


class _Uniform:
    """An importance matrix that weighs every column alike."""
    def importance(self, name):
        return None


def test_kind_mode_probes_a_few_depths_first_and_last(tmp_path):
    from lowbit.eval import sensitivity as S
    from lowbit.quant.gguffile import open_gguf
    src = open_gguf(build_model(tmp_path / "m.gguf", "llama", "F16", embd_type="F16", n_layer=6))
    every = S.plan_measurements(src, _Uniform(), candidates=["Q4_K", "Q8_0"])
    assert all(t.probe for t in every.tensors)
    assert all(q != every.tensors[k].reference for k, q in every.held_out)
    plan = S.plan_measurements(src, _Uniform(), candidates=["Q4_K", "Q8_0"], mode="kind")
    probed = {}
    for t in plan.tensors:
        kind, layer = S.tensor_kind(t.name)
        if t.probe:
            probed.setdefault(kind, set()).add(layer)
    assert probed.pop("token_embd") == {-1}
    assert set(probed) == {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    assert all(layers == {0, 2, 3, 5} for layers in probed.values()), probed
    # unprobed tensors may be held out at the reference type too: that checks their estimate
    unprobed = {k for k, t in enumerate(plan.tensors) if not t.probe}
    all_pairs = {(k, q) for k, t in enumerate(plan.tensors) for q in t.types if k in unprobed or q != t.reference}
    assert set(plan.held_out) <= all_pairs
    assert S.probed_layers([7]) == {7} and S.probed_layers(list(range(28))) == {0, 9, 18, 27}


def test_unprobed_gains_are_their_kinds_median():
    from lowbit.eval.sensitivity import SensitivityTable, TensorCosts, estimate_gains

    def tc(layer, kld=None, kind="ffn_down"):
        t = TensorCosts(f"blk.{layer}.{kind}.weight", kind, layer, 1, 1, error={"Q3_K": 2.0},
                        reference="Q3_K", probed=kld is not None)
        if kld is not None:
            t.measured["Q3_K"] = kld
        return t

    ts = [tc(0, 200.0), tc(1), tc(2, 2.0), tc(4, 4.0), tc(6, 6.0), tc(7), tc(0, 8.0, "attn_q"), tc(1, None, "attn_q")]
    estimate_gains(ts)
    assert [t.gain for t in ts] == pytest.approx([100.0, 2.5, 1.0, 2.0, 3.0, 2.5, 4.0, 4.0])
    ts[1].measured["Q3_K"] = 100.0          # a held-out measurement does not become its gain
    assert ts[1].gain == pytest.approx(2.5) and ts[1].held_out("Q3_K") and not ts[0].held_out("Q3_K")
    # a stored table's estimates follow today's rule, whatever it stored
    ts[1].estimated_gain = 99.0
    again = SensitivityTable.from_json(SensitivityTable("m", ts, 8).to_json())
    assert again.tensors[1].gain == pytest.approx(2.5)


def test_kind_mode_table_and_a_mix_without_the_source_types(tmp_path):
    from lowbit.eval import dynamic as D
    from lowbit.eval import sensitivity as S
    from lowbit.quant.gguffile import open_gguf
    from lowbit.runtime.model import Model
    path = build_model(tmp_path / "m.gguf", "llama", "Q4_K", embd_type="Q8_0", n_layer=5,
                       type_overrides={f"blk.{i}.ffn_down.weight": "Q6_K" for i in range(5)})
    src = open_gguf(path)
    assert D.source_types(src) == {"Q4_K", "Q6_K", "Q8_0"}
    table = S.build_table(src, Model(src), _Uniform(), np.arange(2, 40),
                          candidates=["IQ2_XXS", "Q2_K", "Q4_K", "Q6_K", "Q8_0"], mode="kind")
    assert table.mode == "kind" and table.rank_correlation["pairs"] >= 3
    unprobed = [t for t in table.tensors if not t.probed]
    assert {t.layer for t in unprobed} == {2} and len(unprobed) == 7     # layers 0, 1, 3, 4 probed
    for t in unprobed:
        assert t.gain == np.median([p.own_gain for p in table.tensors if p.kind == t.kind and p.probed])
    assert all(t.reference in t.measured for t in table.tensors if t.probed)
    again = S.SensitivityTable.from_json(table.to_json())
    assert again.mode == "kind" and [t.gain for t in again.tensors] == [t.gain for t in table.tensors]
    _, n_params = D.fixed_bytes(src)
    budget = D.budget_from(src, 6.0, None)
    plain = D.allocate_for_budget(src, table, budget)
    fresh = D.allocate_for_budget(src, table, budget, frozenset(D.source_types(src)))
    assert set(fresh.types.values()) == {"Q2_K"} and fresh.tensor_bytes <= 6.0 * n_params / 8
    assert set(plain.types.values()) - {"Q2_K"}
    with pytest.raises(AllocationError, match="no candidate type is left"):
        D.allocate_for_budget(src, table, budget, frozenset({"Q2_K", "Q4_K", "Q6_K", "Q8_0"}))
    # IQ2_XXS only where the importance matrix has an entry (as llama.cpp makes it): not for the
    # token embedding, which no matrix multiplies
    class BlocksOnly:
        def importance(self, name):
            return None if name == "token_embd.weight" else np.ones(src.tensors[name].n_cols, np.float32)
    tight = D.budget_from(src, 3.0, None)
    assert "IQ2_XXS" not in set(D.allocate_for_budget(src, table, tight).types.values())
    small = D.allocate_for_budget(src, table, tight, im=BlocksOnly())
    assert "IQ2_XXS" in set(small.types.values()) and small.types["token_embd.weight"] != "IQ2_XXS"
