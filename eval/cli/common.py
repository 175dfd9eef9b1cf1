"""What the commands share: the one-sentence error and its flag hints, and signals."""
from __future__ import annotations

import errno
import signal

from lowbit.quant.errors import LowbitError


class UsageError(LowbitError):
    """Flags that do not go together, or a value out of range: one sentence, exit status 1."""


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that every `finally` removes its partial output
    (not a KeyboardInterrupt: the commands that survive Ctrl-C, such as chat, must still stop)."""


def _terminate(signum, frame):
    raise Terminated()


def on_sigterm_unwind() -> None:
    """Turn SIGTERM into the Terminated exception (the default would end the process at once,
    leaving .partial files behind)."""
    signal.signal(signal.SIGTERM, _terminate)


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

