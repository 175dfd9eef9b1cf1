"""What the commands share: the one-sentence error and its flag hints, and signals."""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading

from lowbit.quant.errors import LowbitError


class UsageError(LowbitError):
    """Flags that do not go together, or a value out of range: one sentence, exit status 1."""


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that every `finally` removes its partial output
    (not a KeyboardInterrupt: the commands that survive Ctrl-C, such as chat, must still stop)."""


def _in_native_callback(frame) -> bool:
    """Whether Python code called back from LLVM (llvmlite's ctypes callbacks, run while numba
    compiles) is on the stack: an exception raised there is printed and dropped by ctypes, so a
    Ctrl-C would be lost and the command would finish as if nothing had happened."""
    while frame is not None:
        if "llvmlite" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _on_signal(signum, frame):
    if _in_native_callback(frame):
        # raise it again a moment later, once the callback has returned
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def on_signals_unwind() -> None:
    """Turn SIGINT into KeyboardInterrupt and SIGTERM into Terminated, raised where the program
    is so that every `finally` removes its partial output (SIGTERM's default would end the
    process at once, leaving .partial files behind), and never inside a callback that would
    drop them."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def flag_hints() -> tuple[tuple[type, str], ...]:
    """What the user can do about the structured errors of the lower layers, in the words of
    the command's flags (quant and runtime do not know them)."""
    from lowbit.quant.quantize_model import ImatrixNeededError, RequantizeError
    from lowbit.runtime.config import ContextFullError
    return ((ContextFullError, "raise -c or shorten the prompt"),
            (RequantizeError, "pass --allow-requantize to quantize it again"),
            (ImatrixNeededError, "pass --imatrix FILE (make one with `lowbit imatrix`)"))


def sentence(e: LowbitError, hints=None) -> str:
    """The error's message with the flag that helps, if there is one."""
    for kind, hint in hints or flag_hints():
        if isinstance(e, kind):
            return f"{e}; {hint}"
    return str(e)


# Failures of the machine rather than of the program: said in one sentence, like bad input.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def is_environment_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS



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
