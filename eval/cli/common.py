"""What the commands share: the error printed as one sentence, progress bars, common flags."""
from __future__ import annotations

import sys


class UsageError(Exception):
    """Flags that do not go together, or a value out of range: one sentence, exit status 1."""


def progress_bar(desc: str, total=None, unit="it", disable=False):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=disable or not sys.stderr.isatty(),
                unit_scale=True, dynamic_ncols=True)
