"""Progress of a long command: a bar on a terminal; otherwise lines that a log can read.

Without a terminal (a script, CI, `2> log`), a progress bar's carriage returns make an
unreadable log, and no output at all makes a 30-minute run look hung. So there the progress
is a line at every 10 % of a known total, or, when the total is not known, a line per stage
(stage()) and otherwise at most one every LINE_INTERVAL seconds, each with the time elapsed.
"""
from __future__ import annotations

import sys
import time

LINE_INTERVAL = 10.0     # seconds between lines when the total is unknown


class Progress:
    def __init__(self, desc: str, total: float | None = None, unit: str = "it", disable: bool = False,
                 stream=None):
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.disabled = disable
        self.done = 0
        self.postfix = ""
        self._total = total
        self._start = time.perf_counter()
        self._last_line = self._start
        self._last_tenth = 0
        self._bar = None
        if not disable and self.stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                             file=self.stream)

    @property
    def total(self):
        return self._total

    @total.setter
    def total(self, n) -> None:
        self._total = n
        if self._bar is not None:
            self._bar.total = n

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.desc}: {text}, {self.elapsed:.0f} s elapsed"
                          + (f" ({self.postfix})" if self.postfix else "") + "\n")
        self.stream.flush()
        self._last_line = time.perf_counter()

    def update(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.disabled:
            return
        if self._total:
            tenth = min(10, int(10 * self.done / self._total))
            if tenth > self._last_tenth:
                self._last_tenth = tenth
                self._line(f"{10 * tenth:3d} % ({_count(self.done)} of {_count(self._total)} {self.unit})")
        elif time.perf_counter() - self._last_line >= LINE_INTERVAL:
            self._line(f"{_count(self.done)} {self.unit}")

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def stage(self, text: str) -> None:
        """A named step of a run with few steps (the ladder's): always a line without a terminal."""
        self.done += 1
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc}: {text}")
            self._bar.update(1)
        elif not self.disabled:
            self.stream.write(f"{self.desc}: {text} ({self.elapsed:.0f} s elapsed)\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.disabled and self.done and not self._total:
            self._line(f"done, {_count(self.done)} {self.unit}")


def _count(n: float) -> str:
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:g}"
