"""How many threads a forward pass runs on: the count asked for (numba's, -t), less the cores that
other processes keep busy.

Why: every parallel kernel is one numba `prange` region, split statically into one block per
thread, and ends at a barrier. A forward pass enters 4-8 such regions per layer (one per matrix
product, the attention, the activation quantization), a few hundred per generated token. When
another process runs on one of two cores, the thread that shares that core runs only in the
scheduler's time slices (milliseconds): the region waits for its block at the barrier, while the
other thread has finished its own. Two threads then run slower than one (docs/speed.md: SmolLM2
pp512 147.6 tokens/s with two threads against 751.8 with one, load average 4.3). A work-stealing
or dynamic split does not remove the wait, since the late thread still holds the block it had
begun, and each region's barrier needs all threads.

So before each forward pass the number of threads is chosen from what the machine has free:
the CPU time of other processes (all CPUs' busy time in /proc/stat, this process's own time
taken off, the hypervisor's steal time counted as busy) over the last window of at least
WINDOW seconds. A thread is used only where a core is free to at least MARGIN (another process
using 0.5 of a core takes it): min(asked, floor(cores - busy cores of others + 1 - MARGIN)), at
least one. With a single-threaded busy loop on a 2-core machine that is one thread, as fast as -t 1
(a thread alone on its core runs undisturbed); on an idle machine it is what was asked. Where
/proc/stat is missing, or LOWBIT_FIXED_THREADS=1 is set (to measure what the fixed count does),
the count asked for is used as it is.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numba

WINDOW = 0.25          # seconds: the shortest interval the others' CPU use is measured over
MARGIN = 0.65          # the free share of a core that makes it worth a thread
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_ticks() -> int | None:
    """All CPUs' non-idle time since boot (user, nice, system, irq, softirq, steal), in ticks."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]      # user nice system idle iowait irq softirq steal
    return sum(values) - values[3] - values[4]


def _own_ticks() -> float:
    t = os.times()
    return (t.user + t.system) * _TICKS


class CpuShare:
    """The cores other processes kept busy over the last measured window."""

    def __init__(self, n_cores: int | None = None):
        self.n_cores = n_cores or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._last = self._sample()
        self.others = 0.0          # busy cores of other processes, last window
        self.counts: dict[tuple[int, int], int] = {}   # (asked, used) -> forward passes

    @staticmethod
    def _sample():
        busy = _busy_ticks()
        return None if busy is None else (time.monotonic(), busy, _own_ticks())

    def update(self) -> None:
        """Measure a new window if the last one is at least WINDOW old."""
        with self._lock:
            if self._last is None:
                return
            now = time.monotonic()
            if now - self._last[0] < WINDOW:
                return
            sample = self._sample()
            if sample is None:
                return
            wall = (sample[0] - self._last[0]) * _TICKS
            others = (sample[1] - self._last[1]) - (sample[2] - self._last[2])
            self.others = min(float(self.n_cores), max(0.0, others / wall))
            self._last = sample

    def threads(self, asked: int) -> int:
        """Threads to run on now, for `asked` threads."""
        self.update()
        free = self.n_cores - self.others
        used = max(1, min(asked, int(free + 1.0 - MARGIN)))
        self.counts[(asked, used)] = self.counts.get((asked, used), 0) + 1
        return used


SHARE = CpuShare()
FIXED = os.environ.get("LOWBIT_FIXED_THREADS", "") not in ("", "0")


@contextmanager
def threads_for_forward():
    """numba's thread count lowered to what the machine has free inside the block, restored
    after it; yields the count used."""
    asked = numba.get_num_threads()
    used = SHARE.threads(asked) if asked > 1 and not FIXED else asked
    if used != asked:
        numba.set_num_threads(used)
    try:
        yield used
    finally:
        if used != asked:
            numba.set_num_threads(asked)
