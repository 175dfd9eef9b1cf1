"""What the commands share: the error printed as one sentence, progress bars, common flags."""
from __future__ import annotations

import sys


class UsageError(Exception):
    """Flags that do not go together, or a value out of range: one sentence, exit status 1."""


def add_precision_args(s, default: str) -> None:
    """--exact / --fast: the activation precision of the integer products (runtime/model.py)."""
    g = s.add_mutually_exclusive_group()
    g.add_argument("--exact", dest="precision", action="store_const", const="exact",
                   help="activations in three int8 planes per block: float32-exact products" +
                        (" (default)" if default == "exact" else ""))
    g.add_argument("--fast", dest="precision", action="store_const", const="fast",
                   help="activations in one int8 plane per block, as llama.cpp's" +
                        (" (default)" if default == "fast" else ""))
    s.set_defaults(precision=default)


PRECISION_NOTE = {"exact": "exact activations (3 int8 planes per block of 32)",
                  "fast": "fast activations (1 int8 plane per block of 32)"}


class Stopwatch:
    """Seconds since it was made (load time, printed apart from the token rates)."""

    def __init__(self):
        import time
        self._clock = time.perf_counter
        self.start = self._clock()

    def seconds(self) -> float:
        return self._clock() - self.start


def report_load(model, precision: str, watch: Stopwatch) -> None:
    """Finish loading a model for generation (weights in their kernel layout, kernels loaded:
    Model.prepare) and say on stderr how long loading took, so that the token rates printed
    later count only the tokens."""
    model.prepare()
    print(f"[load: {watch.seconds():.1f} s for {model.gguf.path.name} (file, weight layout, "
          f"kernels); {PRECISION_NOTE[precision]}]", file=sys.stderr, flush=True)


def progress_bar(desc: str, total=None, unit="it", disable=False):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=disable or not sys.stderr.isatty(),
                unit_scale=True, dynamic_ncols=True)
