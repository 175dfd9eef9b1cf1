"""Measurements spread over machines: `--cluster ADDRESS` joins a running Dask cluster.

`lowbit ladder --cluster` runs each entry (quantize, perplexity, KLD) as one task, and the
sensitivity measurement behind `--allocate` and `lowbit quantize --target-bpw/--target-size`
runs one task per tensor. Without --cluster nothing here is imported and everything runs in the
process, as before.

Why Dask distributed rather than Ray: the work is tens to hundreds of independent tasks of
seconds to minutes, each with small inputs (a text, an importance matrix) and small results (a
few numbers); that is what Dask's futures do, and Dask is pure Python (dask, distributed,
tornado, msgpack, cloudpickle, ...: about 40 MB installed), where Ray brings a compiled core with
its own object store and daemons for the same job. A test starts a cluster of two worker
processes with `LocalCluster` in a few seconds and stops it with its processes; a machine joins
with one command (`dask worker tcp://SCHEDULER:8786`). Install it with `pip install lowbit[cluster]`.

What a task carries: the model by name (a model-store name that each worker pulls into its own
cache) or by a path every worker can read (shared storage), with the size the file has here
(checked on the worker); the text and the importance matrix themselves, sent once per worker
(`Client.scatter`), never a path the worker may not have; and a digest of the lowbit, numpy
and numba code, which the worker compares with its own, so that a worker with other code is
refused instead of measuring something else.

Each worker process runs one lowbit task at a time: numba's parallel loops already use all the
cores the worker's machine gives them (NUMBA_NUM_THREADS in the worker's environment limits
them), and numba's default threading layer does not take parallel launches from two threads at
once. Start workers with `--nthreads 1`; the lock below holds the line when they are not.
"""
from __future__ import annotations

import functools
import hashlib
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lowbit.quant.errors import LowbitError

INSTALL_HINT = "pip install 'lowbit[cluster]'"
CONNECT_SECONDS = 20         # to reach the scheduler, and again to see a first worker


class ClusterError(LowbitError):
    """The cluster cannot be used (not installed, not reachable, a worker that differs)."""


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """What the results depend on besides the inputs: lowbit's source and the versions of the
    numeric libraries. Equal digests, equal measurements (on the same kind of CPU)."""
    import llvmlite
    import numba
    import numpy as np

    from lowbit.quant.jit_cache import SOURCE_ROOT
    h = hashlib.sha256(f"numpy {np.__version__} numba {numba.__version__} llvmlite {llvmlite.__version__}".encode())
    for tree in ("quant", "runtime", "eval"):
        for path in sorted((SOURCE_ROOT / tree).rglob("*.py")):
            h.update(str(path.relative_to(SOURCE_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RemoteModel:
    """How a worker finds the model: a model-store name or a path, and what to check."""
    ref: str        # a model-store name, or an absolute path on storage every worker reads
    size: int       # the file's size where the run started
    code: str       # code_digest() where the run started

    @classmethod
    def of(cls, path: Path) -> "RemoteModel":
        from .model_store import known_name
        return cls(known_name(path) or str(Path(path).resolve()), Path(path).stat().st_size, code_digest())

    def local_path(self) -> Path:
        """The model on this worker (pulled into its cache if it is a store name), checked."""
        from .model_store import KNOWN_MODELS, pull
        if self.code != code_digest():
            raise ClusterError(f"the worker on {socket.gethostname()} runs other code than the machine that "
                               "started the run (lowbit, numpy or numba): install the same versions on every worker")
        if self.ref in KNOWN_MODELS:
            path = pull(self.ref, progress=False)
        else:
            path = Path(self.ref)
            if not path.is_file():
                raise ClusterError(f"the worker on {socket.gethostname()} cannot read {self.ref}: name a model "
                                   "from the model store, or keep the file on storage every worker shares")
        if path.stat().st_size != self.size:
            raise ClusterError(f"the worker on {socket.gethostname()} has another file at {self.ref} "
                               f"({path.stat().st_size} bytes, not {self.size})")
        return path


_ONE_AT_A_TIME = threading.Lock()


def task(fn):
    """A function that runs on a worker: one at a time per process, numpy's BLAS pool at one
    thread (as every lowbit command pins it), numba's threads left as the worker has them."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        from .machine import pin_threads
        with _ONE_AT_A_TIME:
            pin_threads(None)
            return fn(*args, **kwargs)
    return run


@contextmanager
def scratch_folder():
    """A new folder for a task's large files, deleted with what is in it when the block ends:
    in the worker's local directory (`dask worker --local-directory`), else in the system's
    temporary directory."""
    try:
        from distributed import get_worker
        where = get_worker().local_directory
    except (ImportError, ValueError):
        where = tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=where, prefix="lowbit-") as d:
        yield Path(d)


def checked_address(address: str) -> str:
    """A scheduler's address as Dask takes it (tcp://HOST:PORT, HOST:PORT, tls://...), checked
    before a client is made: a client that cannot parse its address never starts and then hangs
    the interpreter's exit for its close timeout."""
    from distributed.comm.addressing import get_address_host_port
    try:
        get_address_host_port(address)
    except ValueError:
        raise ClusterError(f"--cluster takes a scheduler's address such as tcp://HOST:8786, not {address!r}") from None
    return address


class Cluster:
    """A client of a running Dask scheduler, with what lowbit's runs use of it."""

    def __init__(self, client):
        self.client = client

    @classmethod
    def connect(cls, address: str, timeout: float = CONNECT_SECONDS) -> "Cluster":
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError(f"--cluster needs Dask distributed: {INSTALL_HINT}") from None
        address = checked_address(address)
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"no Dask scheduler answers at {address} ({str(e).splitlines()[0]})") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            client.close()
            raise ClusterError(f"the scheduler at {address} has no workers; start one with "
                               f"`dask worker {address} --nthreads 1`") from None
        return cls(client)

    @property
    def address(self) -> str:
        return self.client.scheduler.address

    def n_workers(self) -> int:
        return len(self.client.scheduler_info()["workers"])

    def share(self, value):
        """`value` sent to the workers once, as a future that tasks take in its place."""
        return self.client.scatter(value, hash=False)

    def submit(self, fn, *args, priority: int = 0):
        return self.client.submit(fn, *args, pure=False, priority=priority)

    @contextmanager
    def as_completed(self, futures):
        """An iterator of (future, result) as each finishes; what is left is cancelled when the
        block ends early (an error, Ctrl-C), so that the cluster does not go on with an
        abandoned run. A task's exception is raised here, with the worker's traceback."""
        from distributed import as_completed
        try:
            yield ((f, f.result()) for f in as_completed(futures, loop=self.client.loop))
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def gather(self, futures, done=lambda k, total: None) -> list:
        """The results in the order of `futures`; done(k, total) after the k-th has finished."""
        index = {f.key: i for i, f in enumerate(futures)}
        out = [None] * len(futures)
        with self.as_completed(futures) as finished:
            for k, (f, result) in enumerate(finished, 1):
                out[index[f.key]] = result
                done(k, len(futures))
        return out

    def on_every_worker(self, fn, *args):
        """fn(*args) on each worker connected now (cleaning up what the tasks left there)."""
        return self.client.run(fn, *args)

    def close(self) -> None:
        self.client.close()


@contextmanager
def connected(address: str | None):
    """The cluster at `address` (--cluster) for the block, closed after it; None to run here."""
    if address is None:
        yield None
        return
    cluster = Cluster.connect(address)
    try:
        yield cluster
    finally:
        cluster.close()

