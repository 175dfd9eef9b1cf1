"""The one base class of the errors a user can cause.

A LowbitError says, in one sentence, what is wrong with an input: a file, a text, a setting.
Each layer defines its subclasses where they arise (GGUFError in gguffile.py, ModelError in
runtime/config.py, UsageError in eval/cli, ...). The `lowbit` command prints a LowbitError as
that sentence and exits with status 1; any other exception is a bug and shows its traceback.

Messages from quant and runtime do not name the command's flags: where a flag would help, the
error is a subclass the command recognises and adds the flag to (eval/cli/common.py).
"""
from __future__ import annotations


class LowbitError(Exception):
    """Bad input, said in one sentence."""
