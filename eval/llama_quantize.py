"""llama.cpp's own quantizer as a ladder entry beside lowbit's: `llama-quantize` run as a child
process on the same source file, preset, importance matrix and thread count, its wall time
taken around the child and its peak resident memory from the kernel (wait4's ru_maxrss), so the
two quantizers are compared in one run. The file it writes is then measured by lowbit like any
other entry. The binary is the user's own build (e.g. cmake from llama.cpp's sources); lowbit
never needs it otherwise.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from lowbit.quant.errors import LowbitError

LLAMA_QUANTIZE = "llama-quantize"   # the entries' `quantizer` field, and their key's suffix


class LlamaQuantizeError(LowbitError):
    """llama-quantize is missing, or it failed on an entry."""


def check_binary(path: Path) -> None:
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        raise LlamaQuantizeError(f"--llama-quantize {path} is not an executable file")


def last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-n:]) if lines else "no output"


def run_llama_quantize(binary: Path, source: Path, out: Path, preset: str, imatrix: Path | None,
                       threads: int) -> tuple[float, int]:
    """Quantize source to out with llama-quantize; (wall seconds, peak resident bytes). On
    failure or interruption the child is stopped and no output is left behind."""
    args = [str(binary), "--allow-requantize"]     # the ladder's sources may be quantized already
    if imatrix is not None:
        args += ["--imatrix", str(imatrix)]
    args += [str(source), str(out), preset, str(threads)]
    with tempfile.TemporaryFile("w+") as log:       # its per-tensor lines: read only on failure
        start = time.perf_counter()
        child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.send_signal(signal.SIGKILL)
            child.wait()
            Path(out).unlink(missing_ok=True)
            raise
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0 or not Path(out).is_file():
            Path(out).unlink(missing_ok=True)
            log.seek(0)
            raise LlamaQuantizeError(f"llama-quantize {preset} exited with {child.returncode}: "
                                     f"{last_lines(log.read())}")
    return seconds, usage.ru_maxrss * 1024           # ru_maxrss is in KiB on Linux
