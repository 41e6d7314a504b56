"""Compiling generated C++ into a shared library, with a content-hash cache.

Key = generated source + compiler command + every runtime header + package
version.  Per-key file lock, write to a temporary name then rename (atomic),
an in-process table of loaded libraries.  `LANTERN_CACHE_DIR` moves the cache
(default ~/.cache/lantern_stage); `LANTERN_CACHE=0` disables reuse.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import __version__
from .paths import RUNTIME_DIR


class CompileError(Exception):
    """The C++ compiler is missing or rejected the generated code."""


def cache_dir() -> Path:
    return Path(os.environ.get("LANTERN_CACHE_DIR") or Path.home() / ".cache" / "lantern_stage")


def openblas():
    import scipy_openblas32 as ob

    return ob.get_include_dir(), ob.get_lib_dir(), ob.get_library()


def compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    found = shutil.which(cxx)
    if not found:
        raise CompileError(
            f"C++ compiler {cxx!r} not found"
            + (" (from the CXX environment variable)" if "CXX" in os.environ else "")
            + ": install g++ (e.g. `apt-get install g++`) or point CXX at a C++17 compiler"
        )
    return found


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


def cache_key(source: str, cxx: str) -> str:
    h = hashlib.sha256()
    cmd = compile_command(cxx, Path("module.cpp"), Path("module.so"))
    for part in (source, " ".join(cmd), _runtime_digest(), __version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def build(source: str) -> Path:
    """The path of a shared library built from `source`, compiled at most once."""
    cxx = compiler()
    key = cache_key(source, cxx)
    root = cache_dir()
    folder = root / key
    so = folder / "module.so"
    if so.exists() and os.environ.get("LANTERN_CACHE", "1") != "0":
        return so
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompileError(f"cannot create the compile cache {folder}: {e}; set LANTERN_CACHE_DIR") from None
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if so.exists() and os.environ.get("LANTERN_CACHE", "1") != "0":
            return so
        src = folder / "module.cpp"
        src.write_text(source)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        cmd = compile_command(cxx, src, Path(tmp))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            os.unlink(tmp)
            raise CompileError(f"cannot run the C++ compiler {cxx}: {e}") from None
        if proc.returncode != 0:
            os.unlink(tmp)
            raise CompileError(
                f"C++ compilation failed (source kept at {src}):\n{_first_errors(proc.stderr)}\n"
                f"command: {' '.join(cmd)}"
            )
        os.replace(tmp, so)
    return so


def _first_errors(stderr: str, limit: int = 30) -> str:
    lines = stderr.strip().splitlines()
    errors = [i for i, ln in enumerate(lines) if "error" in ln]
    start = max(errors[0] - 2, 0) if errors else 0
    return "\n".join(lines[start:start + limit])
