"""Compiling generated C++ into a shared library, with a content-hash cache.

Key = generated source + compiler command (as configured: `CXX` or "g++",
so a cache hit needs no compiler on the machine) + every runtime header +
package version + the CPU that `-march=native` resolves from (`host_cpu`).
Per-key file lock, write to a temporary name then rename (atomic), an
in-process table of loaded libraries.  `LANTERN_CACHE_DIR` moves
the cache (default ~/.cache/lantern_stage); `LANTERN_CACHE=0` disables reuse.

Every library is written with the sha256 of its bytes beside it
(`module.so.sha256`) and checked against it before it is loaded: a truncated
or overwritten library would crash `dlopen` (SIGBUS, SIGSEGV), so a damaged
entry is rebuilt instead, with a warning.  `LANTERN_COMPILE_TIMEOUT` (seconds)
bounds both the compiler run and the wait for another process's compile of
the same key.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from . import __version__
from .paths import RUNTIME_DIR
from .runtime import openblas_loading

LOCK_NOTICE_SECONDS = 3.0  # how long a wait for another compile goes unannounced
LOCK_POLL_SECONDS = 0.05


class CompileError(Exception):
    """The C++ compiler is missing, rejected the generated code, or timed out."""


def cache_dir() -> Path:
    return Path(os.environ.get("LANTERN_CACHE_DIR") or Path.home() / ".cache" / "lantern_stage")


def openblas():
    with openblas_loading():  # importing scipy_openblas32 loads the library
        import scipy_openblas32 as ob

    return ob.get_include_dir(), ob.get_lib_dir(), ob.get_library()


def compiler_name() -> str:
    return os.environ.get("CXX", "g++")


def compiler() -> str:
    cxx = compiler_name()
    found = shutil.which(cxx)
    if not found:
        raise CompileError(
            f"C++ compiler {cxx!r} not found"
            + (" (from the CXX environment variable)" if "CXX" in os.environ else "")
            + ": install g++ (e.g. `apt-get install g++`) or point CXX at a C++17 compiler"
        )
    return found


def compile_timeout() -> float | None:
    """LANTERN_COMPILE_TIMEOUT in seconds, or None (no limit)."""
    text = os.environ.get("LANTERN_COMPILE_TIMEOUT", "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CompileError(f"LANTERN_COMPILE_TIMEOUT={text!r} is not a positive number of seconds")
    return value


def compile_command(cxx: str, src: Path, out: Path) -> list[str]:
    inc, lib_dir, lib = openblas()
    return [
        cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
        # No errno and no trapping: lets g++ vectorise math (cpp_runtime/math.h)
        # without -ffast-math's reassociation.
        "-fno-math-errno", "-fno-trapping-math", "-Wno-unused-variable", "-Wno-unused-but-set-variable",
        f"-I{RUNTIME_DIR}", f"-I{inc}", str(src), "-o", str(out),
        f"-L{lib_dir}", f"-l{lib}", f"-Wl,-rpath,{lib_dir}",
    ]


def _runtime_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(RUNTIME_DIR.glob("*.h")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """What `-march=native` is resolved from: the CPU's vendor, family, model and
    feature flags (Linux's /proc/cpuinfo: x86's fields, or ARM's implementer,
    part and features; elsewhere the platform's names).  In
    the cache key, so that a cache shared by machines of different CPUs (a home
    directory on NFS under mpirun, say) never hands one a library built for
    instructions it lacks, which would die of SIGILL at its first vector loop."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough: the cores are alike
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    parts = [fields.get(k, "") for k in ("vendor_id", "cpu family", "model", "flags",
                                         "CPU implementer", "CPU architecture", "CPU part", "Features")]
    if not any(parts):
        parts = [platform.machine(), platform.processor()]
    return "|".join(parts)


def cache_key(source: str, cxx: str) -> str:
    h = hashlib.sha256()
    cmd = compile_command(cxx, Path("module.cpp"), Path("module.so"))
    for part in (source, " ".join(cmd), _runtime_digest(), __version__, host_cpu()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digest_path(so: Path) -> Path:
    return so.with_name(so.name + ".sha256")


def library_problem(so: Path) -> str | None:
    """Why the cached library `so` must not be loaded, or None when its bytes
    are the ones written (its sha256 matches the one recorded beside it)."""
    try:
        recorded = _digest_path(so).read_text().strip()
    except OSError:
        return "its content hash (module.so.sha256) is missing"
    try:
        actual = file_digest(so)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if actual != recorded:
        return "its content does not match the hash recorded when it was written (truncated or overwritten?)"
    return None


def _reuse() -> bool:
    return os.environ.get("LANTERN_CACHE", "1") != "0"


def build(source: str) -> Path:
    """The path of a shared library built from `source`, compiled at most once."""
    key = cache_key(source, compiler_name())
    root = cache_dir()
    folder = root / key
    so = folder / "module.so"
    damaged = None
    if so.exists() and _reuse():
        damaged = library_problem(so)
        if damaged is None:
            return so
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompileError(f"cannot create the compile cache {folder}: {e}; set LANTERN_CACHE_DIR") from None
    timeout = compile_timeout()
    with open(root / f"{key}.lock", "a+") as lock:
        waited = _acquire(lock, key, timeout)
        _remove_orphans(folder)
        if so.exists() and _reuse():  # built by another process while we waited, or damaged
            damaged = library_problem(so)
            if damaged is None:
                return so
        if damaged:
            warnings.warn(f"lantern_stage: the cached library {so} is damaged: {damaged}; rebuilding it",
                          RuntimeWarning, stacklevel=3)
        cxx = compiler()
        src = folder / "module.cpp"
        src.write_text(source)
        fd, tmp = tempfile.mkstemp(prefix="tmp-", suffix=".so.part", dir=folder)
        os.close(fd)
        cmd = compile_command(cxx, src, Path(tmp))
        left = None if timeout is None else max(timeout - waited, 0.1)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except OSError as e:
            os.unlink(tmp)
            raise CompileError(f"cannot run the C++ compiler {cxx}: {e}") from None
        except subprocess.TimeoutExpired:
            os.unlink(tmp)
            raise CompileError(
                f"the C++ compiler ran longer than LANTERN_COMPILE_TIMEOUT={timeout:g} s "
                f"(cache key {key}, source kept at {src}); raise the limit or unset it"
            ) from None
        if proc.returncode != 0:
            os.unlink(tmp)
            raise CompileError(
                f"C++ compilation failed (source kept at {src}):\n{_first_errors(proc.stderr)}\n"
                f"command: {' '.join(cmd)}"
            )
        _write_atomic(_digest_path(so), file_digest(tmp) + "\n")
        os.replace(tmp, so)
    return so


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix="tmp-", suffix=".part", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _acquire(lock, key: str, timeout: float | None) -> float:
    """Take the per-key lock, saying after a few seconds who holds it; returns
    the seconds waited.  The holder writes its pid, host and start time into
    the lock file, so a waiter can name it."""
    start = time.monotonic()
    announced = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pass
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise CompileError(
                f"waited {waited:.0f} s (LANTERN_COMPILE_TIMEOUT={timeout:g}) for the compile cache lock of key "
                f"{key}, held by {_holder(lock)}; if that process is stuck, kill it (the lock is released "
                "when it exits)"
            )
        if not announced and waited >= LOCK_NOTICE_SECONDS:
            print(f"lantern_stage: waiting for {_holder(lock)}, which is compiling the same module "
                  f"(cache key {key}, lock {lock.name}); set LANTERN_COMPILE_TIMEOUT to bound the wait",
                  file=sys.stderr, flush=True)
            announced = True
        time.sleep(LOCK_POLL_SECONDS)
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
    lock.flush()
    return time.monotonic() - start


def _holder(lock) -> str:
    try:
        lock.seek(0)
        pid, host, since = lock.read().split()[:3]
        return f"process {pid} on {host} (since {time.strftime('%H:%M:%S', time.localtime(int(since)))})"
    except (OSError, ValueError):
        return "another process"


def _remove_orphans(folder: Path) -> None:
    """Temporary files of compiles that were killed (SIGKILL, power loss):
    called under the key's lock, so no live compile owns them."""
    for path in folder.glob("tmp*"):
        try:
            path.unlink()
        except OSError:
            pass


def _first_errors(stderr: str, limit: int = 30) -> str:
    lines = stderr.strip().splitlines()
    errors = [i for i, ln in enumerate(lines) if "error" in ln]
    start = max(errors[0] - 2, 0) if errors else 0
    return "\n".join(lines[start:start + limit])
