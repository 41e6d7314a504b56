"""What `lantern compile` writes: an importable package, and optionally a
standalone C++ training program with its Makefile.

OUT/NAME/
    __init__.py      the entry points as functions; params, state_dict(), ...
    _runtime.py      the cffi loader (a copy of lantern_stage/runtime.py)
    manifest.json    entry points, their signatures, the state's keys
    module.cpp       the generated C++          module.so  the built library
    state.npz        initial values of the state (parameters, optimizer state)
    standalone/      with --standalone: main.cpp, module.cpp, runtime/*.h,
                     Makefile, init/<key>.npy, data/<input>.npy

The package needs numpy and cffi only.  OUT/NAME is replaced as a whole: the
files are written to a temporary sibling that is renamed into place.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import jinja2
import numpy as np

from . import __version__
from .build import compile_command, file_digest, openblas
from .export import Bundle, Entry
from .paths import RUNTIME_DIR, TEMPLATE_DIR
from .runtime import save_arrays

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


class OutputError(Exception):
    """The output folder cannot be written."""


class OutputFolder:
    """OUT/NAME, written into a temporary folder beside it and swapped in by
    `commit` (under a lock, so concurrent compiles of one model both succeed
    and leave one complete package)."""

    def __init__(self, out, name: str):
        self.out = Path(out)
        self.final = self.out / name
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.out))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes it private
        except OSError as e:
            raise OutputError(f"cannot write to the output folder {self.out}: {e.strerror or e}") from None
        problem = self._not_replaceable()
        if problem:
            self.discard()
            raise OutputError(problem)

    def _not_replaceable(self) -> str | None:
        """Why the existing OUT/NAME must not be replaced: only an earlier
        package (or an empty folder) is."""
        final = self.final
        if not final.exists():
            return None
        if not final.is_dir():
            return f"cannot write the package to {final}: a file of that name exists"
        if any(final.iterdir()) and not (final / "manifest.json").is_file():
            return (f"{final} exists and is not a package written by lantern compile; "
                    "remove it or choose another -o / --name")
        return None

    def commit(self) -> Path:
        try:
            with open(self.out / f".{self.final.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                problem = self._not_replaceable()
                if problem:
                    raise OutputError(problem)
                old = None
                if self.final.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".old", dir=self.out))
                    os.rename(self.final, old / "previous")
                os.rename(self.path, self.final)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            self.discard()
            raise OutputError(f"cannot write the package to {self.final}: {e.strerror or e}") from None
        except OutputError:
            self.discard()
            raise
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def _json_text(data) -> str:
    """Indented JSON with lists of numbers (shapes) on one line."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                  text) + "\n"


def _free_name(name: str, taken: list[str]) -> str:
    """`name`, or `name` with underscores appended, so no argument shadows it."""
    while name in taken:
        name += "_"
    return name


def _pydoc(text: str) -> str:
    """Text safe inside a generated triple-quoted docstring."""
    return text.replace("\\", "\\\\").replace('"""', "'''")


# ------------------------------------------------------------------ the package
def write_package(bundle: Bundle, folder: Path, name: str, library: Path) -> None:
    manifest = bundle.manifest(name)
    try:
        shutil.copyfile(library, folder / manifest["library"])
        manifest["library_sha256"] = file_digest(folder / manifest["library"])
        save_arrays(folder / manifest["state_file"], bundle.state)
    except OSError as e:
        raise OutputError(f"cannot write into {folder}: {e.strerror or e}") from None
    _write(folder / manifest["source"], bundle.cpp_source)
    runtime = (Path(__file__).parent / "runtime.py").read_text()
    _write(folder / "_runtime.py", f"# Copied from lantern_stage {__version__} (lantern_stage/runtime.py).\n" + runtime)
    _write(folder / "manifest.json", _json_text(manifest))
    entries = [dict(name=e["name"], kind=e["kind"], signature=e["signature"], doc=_pydoc(e["doc"]),
                    args=[a["name"] for a in e["arguments"]],
                    table=_free_name("_ENTRIES", [a["name"] for a in e["arguments"]]))
               for e in manifest["entries"]]
    _write(folder / "__init__.py", _ENV.get_template("package_init.py.j2").render(
        name=name, version=__version__, model_file=_pydoc(str(bundle.model_file)), entries=entries,
        rebuild=repr(f"rebuild the package with `lantern compile {bundle.model_file} --name {name}`")))


# ------------------------------------------------------------------ the standalone program
def loss_problem(entry: Entry) -> str | None:
    """Why `entry` cannot be trained (its first output is not a float32 loss), or None."""
    outs = entry.program.outputs
    if not outs or outs[0].shape != () or outs[0].dtype != "float32":
        return f"entry point {entry.name!r} does not return a float32 loss (a 0-d tensor) first"
    return None


def standalone_problem(entry: Entry) -> str | None:
    """Why the standalone program cannot train `entry`, or None."""
    if any(s.kind == "intarray" for s, _ in entry.program.inputs):
        return f"entry point {entry.name!r} takes an IntArray input, which .npy batches cannot stack"
    return loss_problem(entry)


def compiler_flags() -> list[str]:
    """The optimisation and language flags `lantern_stage.build` compiles modules with."""
    cmd = compile_command("c++", Path("module.cpp"), Path("module.so"))
    return [f for f in cmd[1:] if f.startswith("-") and f not in ("-shared", "-o")
            and not f.startswith(("-I", "-L", "-l", "-Wl,"))]


def data_file_name(input_name: str) -> str:
    """The standalone program's data/<name>.npy of an input: a leaf of a
    nested argument, params["w"] or xs[0], is params.w or xs.0."""
    name = re.sub(r'\["([^"]*)"\]|\[(\d+)\]', lambda m: "." + (m.group(1) if m.group(1) is not None else m.group(2)),
                  input_name)
    return re.sub(r"[^\w.]", "_", name)


def write_standalone(bundle: Bundle, folder: Path, name: str, entry: Entry, batches: list | None) -> Path:
    """folder/standalone/: a C++ program training `entry` without Python.
    `batches` (input tuples) become data/<input>.npy, stacked."""
    problem = standalone_problem(entry)
    if problem:
        raise ValueError(problem)
    root = folder / "standalone"
    try:
        for sub in ("runtime", "init", "data"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for header in sorted(RUNTIME_DIR.glob("*.h")):
            shutil.copyfile(header, root / "runtime" / header.name)
        for key in entry.captures:
            np.save(root / "init" / f"{key}.npy", np.array(bundle.state[key], order="C"))
        specs = [s for s, _ in entry.program.inputs]
        leaves = [entry.flatten_batch(b) for b in batches or []]
        for k, spec in enumerate(specs):
            stacked = np.stack([np.asarray(b[k], dtype=spec.dtype) for b in leaves]) if leaves else None
            if stacked is not None:
                np.save(root / "data" / f"{data_file_name(spec.name)}.npy", stacked)
    except OSError as e:
        raise OutputError(f"cannot write into {root}: {e.strerror or e}") from None

    p = entry.program
    obj = entry.export.obj
    common = dict(version=__version__, model_file=str(bundle.model_file), name=name, entry=entry.name)
    _write(root / "module.cpp", bundle.cpp_source)
    _write(root / "main.cpp", _ENV.get_template("standalone_main.cpp.j2").render(
        **common, symbol=p.symbol,
        inputs=[dict(name=data_file_name(s.name), dtype=s.dtype, shape=s.shape) for s in specs],
        state=[dict(name=k, dtype=str(bundle.state[k].dtype), shape=bundle.state[k].shape) for k in entry.captures],
        outputs=[dict(dtype=v.dtype, shape=v.shape) for v in p.outputs],
        arena_bytes=int(obj.arena_bytes), max_depth=int(obj.max_depth)))
    inc, lib_dir, lib = openblas()
    _write(root / "Makefile", _ENV.get_template("standalone.mk.j2").render(
        **common, flags=compiler_flags(), openblas_inc=inc, openblas_lib=lib_dir, openblas_name=lib,
        steps=len(batches) if batches else 10))
    return root
