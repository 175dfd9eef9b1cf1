"""What the commands, the ladder and the Python API read and write by name: a model and its
tokenizer (by name or path), a text, an output path. The checks live here so that each says
what is wrong in the same words wherever it is made."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from lowbit.quant.errors import LowbitError


class InputError(LowbitError):
    """A text or output path the user named that cannot be used: one sentence."""


def load_model(name_or_path, precision: str = "exact"):
    """(model, tokenizer); precision "exact" or "fast": the activations of the integer products
    (runtime/model.py, Model.precision)."""
    from lowbit.runtime.model import Model
    from lowbit.runtime.tokenizer import Tokenizer

    from .model_store import resolve_model

    model = Model.load(resolve_model(str(name_or_path)))
    model.precision = precision
    return model, Tokenizer(model.gguf.metadata)


def read_text(path) -> str:
    """A UTF-8 text file's contents."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"text file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"text file {path} is a directory") from None
    except UnicodeDecodeError:
        raise InputError(f"text file {path} is not UTF-8 text") from None


def write_atomically(path, data: str | bytes) -> None:
    """Write a small file (text, or bytes as they are) under a temporary name and rename it into
    place: an interrupted write leaves the old file (or none), never half of one, and no
    temporary file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_dir(path, what: str = "output") -> None:
    """Refuse an output path whose directory does not exist, before any long work starts."""
    parent = Path(path).parent
    if not parent.exists():
        raise InputError(f"the {what} directory {parent} does not exist")


@contextmanager
def pass_work_dir(output: Path, wanted: bool):
    """A temporary directory beside `output` for the layer pass's encoded tensors (as large as
    the file to come, so on its disk), removed however the run ends; None if not wanted."""
    if not wanted:
        yield None
        return
    with tempfile.TemporaryDirectory(dir=Path(output).resolve().parent, prefix=".lowbit-pass-") as work:
        yield Path(work)
