"""Split GGUF files (gguf-split's layout): writing, reading as one model, and every way a set of
shards can be wrong; and outputs that appear only when complete."""
from __future__ import annotations

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from lowbit.quant import writer
from lowbit.quant.gguffile import GGUFError, open_gguf
from lowbit.quant.quantize_model import quantize_model
from lowbit.quant.recipes import PlanOptions
from lowbit.quant.writer import SplitRule, TensorSpec, parse_size, plan_shards, write_gguf
from lowbit.runtime.model import Model

from synthetic import build_model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("split") / "f32.gguf", "llama", "F32", embd_type="F32", n_layer=4)


@pytest.fixture(scope="module")
def whole_and_split(source, tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    g = open_gguf(source)
    whole = quantize_model(g, d / "whole.gguf", PlanOptions("Q8_0")).paths
    split = quantize_model(g, d / "m.gguf", PlanOptions("Q8_0"), split=SplitRule(max_tensors=10)).paths
    return whole[0], split


def test_split_round_trip(whole_and_split, source):
    whole, shards = whole_and_split
    n_tensors = len(open_gguf(source).tensors)
    assert [p.name for p in shards] == [f"m-{i:05d}-of-00004.gguf" for i in range(1, 5)]
    assert n_tensors == 38 and len(shards) == -(-n_tensors // 10)
    a, b = open_gguf(whole), open_gguf(shards[0])
    assert b.shards == shards and b.file_bytes == sum(p.stat().st_size for p in shards)
    assert list(a.tensors) == list(b.tensors)
    assert {t.shard for t in b.tensors.values()} == {0, 1, 2, 3}
    for name in a.tensors:
        assert np.array_equal(a.raw(name), b.raw(name)), name
    split_keys = {"split.no": 0, "split.count": 4, "split.tensors.count": n_tensors}
    rest = {k: v for k, v in b.metadata.items() if k not in split_keys}
    assert list(rest) == list(a.metadata)
    assert all(np.array_equal(rest[k], a.metadata[k]) for k in rest)
    assert {k: b.metadata[k] for k in split_keys} == split_keys
    # the model runs from its shards as from the whole file
    x, y = Model.load(whole), Model.load(shards[0])
    np.testing.assert_array_equal(x.forward([3, 4, 5], x.new_cache(4)), y.forward([3, 4, 5], y.new_cache(4)))


def test_shards_carry_llamacpp_keys(whole_and_split):
    _, shards = whole_and_split
    for i, p in enumerate(shards):
        r = gguf.GGUFReader(str(p))
        f = r.fields
        assert f["split.no"].types == [gguf.GGUFValueType.UINT16] and f["split.no"].contents() == i
        assert f["split.count"].types == [gguf.GGUFValueType.UINT16] and f["split.count"].contents() == 4
        assert f["split.tensors.count"].types == [gguf.GGUFValueType.INT32]
        # as gguf-split: all other metadata in the first shard only
        assert ("general.architecture" in f) == (i == 0)
        assert len(r.tensors) == (10 if i < 3 else 8)


def test_a_split_source_quantizes_like_the_whole(whole_and_split, tmp_path):
    whole, shards = whole_and_split
    a = quantize_model(open_gguf(whole), tmp_path / "a.gguf", PlanOptions("Q4_0"), allow_requantize=True)
    b = quantize_model(open_gguf(shards[0]), tmp_path / "b.gguf", PlanOptions("Q4_0"), allow_requantize=True)
    assert a.paths[0].read_bytes() == b.paths[0].read_bytes()  # no split.* keys carried over


def test_plan_by_size_is_a_soft_limit():
    from lowbit.quant.types import by_name

    def spec(rows):
        return TensorSpec(f"t{rows}", (rows, 32), by_name("F32"), lambda: None)   # 128 bytes a row
    sizes = [10, 10, 10, 50, 1, 1]
    shards = plan_shards([spec(r) for r in sizes], SplitRule(max_bytes=3000))
    assert [[t.shape[0] for t in s] for s in shards] == [[10, 10], [10], [50], [1, 1]]
    shards = plan_shards([spec(r) for r in sizes], SplitRule(max_bytes=3000, max_tensors=1))
    assert len(shards) == 6
    assert parse_size("500M") == 500_000_000 and parse_size("2G") == 2 * 10**9 and parse_size("1.5g") == 1_500_000_000
    for bad in ("", "M", "-1G", "0", "ten"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)


def _copy_set(shards, d, rename=None):
    d.mkdir()
    out = []
    for p in shards:
        q = d / (rename(p.name) if rename else p.name)
        q.write_bytes(p.read_bytes())
        out.append(q)
    return out


def test_bad_sets_of_shards_are_refused(whole_and_split, source, tmp_path):
    _, shards = whole_and_split
    missing = _copy_set(shards, tmp_path / "missing")
    missing[2].unlink()
    with pytest.raises(GGUFError, match="m-00003-of-00004.gguf is missing"):
        open_gguf(missing[0])
    with pytest.raises(GGUFError, match="opened by its first shard: open m-00001-of-00004.gguf"):
        open_gguf(shards[1])
    swapped = _copy_set(shards, tmp_path / "swapped",
                        rename=lambda n: {"m-00002-of-00004.gguf": "m-00003-of-00004.gguf",
                                          "m-00003-of-00004.gguf": "m-00002-of-00004.gguf"}.get(n, n))
    with pytest.raises(GGUFError, match="holds shard 3 of 4, not shard 2: .* out of order"):
        open_gguf(swapped[0])
    renamed = tmp_path / "renamed.gguf"
    renamed.write_bytes(shards[0].read_bytes())
    with pytest.raises(GGUFError, match="does not end in -00001-of-00004.gguf"):
        open_gguf(renamed)
    # shard 2 of another model split the same way: its tensor count gives it away
    other = build_model(tmp_path / "other.gguf", "llama", "F32", embd_type="F32", n_layer=5)
    foreign = quantize_model(open_gguf(other), tmp_path / "o.gguf", PlanOptions("Q8_0"),
                             split=SplitRule(max_tensors=12)).paths
    assert len(foreign) == 4
    mixed = _copy_set(shards, tmp_path / "mixed")
    mixed[1].write_bytes(foreign[1].read_bytes())
    with pytest.raises(GGUFError, match="is a shard of another model"):
        open_gguf(mixed[0])
    # a shard that is no shard at all
    plain = _copy_set(shards, tmp_path / "plain")
    plain[3].write_bytes(source.read_bytes())
    with pytest.raises(GGUFError, match="is not a shard of a split model"):
        open_gguf(plain[0])


def _failing_specs(source, fail_at: int):
    g = open_gguf(source)
    specs = []
    for i, (n, t) in enumerate(g.tensors.items()):
        def produce(n=n, i=i):
            if i == fail_at:
                raise RuntimeError("encoder failed")
            return g.raw(n)
        specs.append(TensorSpec(n, t.shape, t.qtype, produce))
    return g, specs


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "partial-file"])
def test_a_failed_write_leaves_nothing(source, tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setattr(writer, "_can_name_unnamed", lambda d: False)
    else:
        assert writer._can_name_unnamed(tmp_path)
    g, specs = _failing_specs(source, fail_at=30)   # in the third of four shards
    with pytest.raises(RuntimeError, match="encoder failed"):
        write_gguf(tmp_path / "m.gguf", g.metadata, g.metadata_types, specs, split=SplitRule(max_tensors=10))
    with pytest.raises(RuntimeError, match="encoder failed"):
        write_gguf(tmp_path / "w.gguf", g.metadata, g.metadata_types, specs)
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_split import _failing_specs
from lowbit.quant.writer import SplitRule, write_gguf
g, specs = _failing_specs({source!r}, fail_at=-1)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
specs[25].produce = die
write_gguf({out!r}, g.metadata, g.metadata_types, specs, split=SplitRule(max_tensors=10))
"""


def test_a_killed_write_leaves_nothing(source, tmp_path):
    """SIGKILL (the OOM killer, a scheduler) runs no clean-up: the files must have had no names."""
    out = tmp_path / "o" / "m.gguf"
    out.parent.mkdir()
    code = KILLED_WRITER.format(tests=os.path.dirname(__file__), source=str(source), out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    assert list(out.parent.iterdir()) == []


def lowbit(*args):
    return subprocess.run([sys.executable, "-m", "lowbit.eval.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_the_commands_take_split_files(source, whole_and_split, tmp_path):
    done = lowbit("quantize", source, tmp_path / "q.gguf", "Q8_0", "--split-max-size", "150K")
    assert done.returncode == 0, done.stderr
    shards = sorted(tmp_path.glob("q-*-of-*.gguf"))
    assert len(shards) > 2 and f"in {len(shards)} shards" in done.stdout
    assert sorted(tmp_path.iterdir()) == shards
    held = [[int(t.n_bytes) for t in gguf.GGUFReader(str(p)).tensors] for p in shards]
    assert all(sum(h) <= 150_000 or len(h) == 1 for h in held) and max(map(len, held)) > 1
    done = lowbit("inspect", shards[0])
    assert done.returncode == 0 and f"in {len(shards)} shards" in done.stdout, done.stderr
    # a split source, requantized into one file, equals the same from the whole file
    whole, split = whole_and_split
    for name, src in (("a.gguf", whole), ("b.gguf", split[0])):
        done = lowbit("quantize", src, tmp_path / name, "Q4_0", "--allow-requantize")
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    for args, message in [(["--split-max-size", "12X"], "'12X' is not a size such as 500M or 2G"),
                          (["--split-max-tensors", "0"], "must be positive"),
                          ([], None)]:
        done = lowbit("quantize", split[1], tmp_path / "c.gguf", "Q8_0", *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert (message or "opened by its first shard") in done.stderr, done.stderr
    assert not (tmp_path / "c.gguf").exists()
