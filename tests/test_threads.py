"""The thread count of a forward pass under other processes' load (runtime/threads.py)."""
from __future__ import annotations

import numba
import pytest

from lowbit.runtime import threads


class FakeClock:
    """/proc/stat, this process's CPU time and the monotonic clock, advanced by hand (ticks)."""

    def __init__(self, monkeypatch):
        self.now, self.busy, self.own = 100.0, 10_000, 500.0
        monkeypatch.setattr(threads, "_busy_ticks", lambda: self.busy)
        monkeypatch.setattr(threads, "_own_ticks", lambda: self.own)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.now)

    def run(self, seconds, others_cores, own_cores):
        ticks = threads._TICKS * seconds
        self.now += seconds
        self.own += own_cores * ticks
        self.busy += round((others_cores + own_cores) * ticks)


@pytest.mark.parametrize("others, want", [(0.0, 2), (0.2, 2), (0.5, 1), (0.67, 1), (1.0, 1), (2.0, 1)])
def test_two_threads_only_when_the_second_core_is_free(monkeypatch, others, want):
    clock = FakeClock(monkeypatch)
    share = threads.CpuShare(n_cores=2)
    clock.run(1.0, others, own_cores=1.0)
    assert share.threads(2) == want
    assert share.threads(1) == 1


def test_more_cores_leave_out_only_the_busy_ones(monkeypatch):
    clock = FakeClock(monkeypatch)
    share = threads.CpuShare(n_cores=8)
    clock.run(1.0, 3.0, own_cores=2.0)
    assert share.threads(8) == 5
    assert share.threads(4) == 4


def test_the_load_is_measured_over_a_window_not_per_call(monkeypatch):
    clock = FakeClock(monkeypatch)
    share = threads.CpuShare(n_cores=2)
    clock.run(1.0, 1.0, own_cores=1.0)
    assert share.threads(2) == 1
    clock.run(threads.WINDOW / 10, 0.0, own_cores=1.0)   # too short to count: the last window holds
    assert share.threads(2) == 1
    clock.run(threads.WINDOW, 0.0, own_cores=1.0)        # the busy process has ended
    assert share.threads(2) == 2
    assert share.counts == {(2, 1): 2, (2, 2): 1}


def test_without_proc_stat_the_count_asked_for_is_used(monkeypatch):
    monkeypatch.setattr(threads, "_busy_ticks", lambda: None)
    share = threads.CpuShare(n_cores=2)
    assert share.threads(2) == 2


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_a_forward_pass_restores_the_thread_count(monkeypatch):
    clock = FakeClock(monkeypatch)
    share = threads.CpuShare(n_cores=2)
    monkeypatch.setattr(threads, "SHARE", share)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        clock.run(1.0, 1.0, own_cores=1.0)
        with threads.threads_for_forward() as used:
            assert used == 1 and numba.get_num_threads() == 1
        assert numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(before)
