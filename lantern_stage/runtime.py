"""Loading compiled modules through cffi and calling their entry points.

Every argument is checked (dtype, shape, contiguity, value range) before it
reaches C++, and so is every captured array at every call (it may have been
resized, reshaped or re-typed in place since the last one); outputs are numpy
arrays allocated here and written by C++ in place; a C++ error comes back as
a status and is raised as a Python exception (SIGINT during a call: status 5,
KeyboardInterrupt).
This module needs only numpy and cffi, so compiled packages can use it
without the rest of lantern_stage.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

import numpy as np

# OpenBLAS (a DYNAMIC_ARCH build) picks its kernels once, when the library is
# loaded: from OPENBLAS_CORETYPE when that is set, else from the CPU.  Machines
# of one kind may set OPENBLAS_CORETYPE for everything they run (the AMD EPYC
# Zen 5 machines here set Haswell: AVX2 kernels on a CPU with full AVX-512,
# sgemm at ~2/3 of the speed of the SkylakeX kernels; benchmarks/NOTES.md,
# "Session 4").  Compiled modules link their own OpenBLAS (scipy-openblas32,
# not numpy's), so lantern_stage chooses its kernels from the CPU itself:
# SkylakeX where the CPU has the AVX-512 subsets those kernels use, else
# OpenBLAS's own choice; LANTERN_OPENBLAS_CORETYPE overrides that.  The
# inherited OPENBLAS_CORETYPE is set back once the library is loaded, so
# nothing else sees the change.
SKYLAKEX_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def openblas_kernels(environ=os.environ, cpuinfo: str = "/proc/cpuinfo"):
    """The OpenBLAS kernel set (an OPENBLAS_CORETYPE name) lantern_stage's
    OpenBLAS loads with, or None for OpenBLAS's own choice from the CPU."""
    if environ.get("LANTERN_OPENBLAS_CORETYPE"):
        return environ["LANTERN_OPENBLAS_CORETYPE"]
    if all(f in cpu_flags(cpuinfo) for f in SKYLAKEX_FLAGS):
        return "SkylakeX"
    return None


@contextlib.contextmanager
def openblas_loading(environ=os.environ):
    """Around the first load of a library linking scipy-openblas32: its
    OPENBLAS_CORETYPE is `openblas_kernels()`; the inherited value after."""
    kernels, before = openblas_kernels(environ), environ.get("OPENBLAS_CORETYPE")
    if kernels is None:
        environ.pop("OPENBLAS_CORETYPE", None)
    else:
        environ["OPENBLAS_CORETYPE"] = kernels
    try:
        yield kernels
    finally:
        if before is None:
            environ.pop("OPENBLAS_CORETYPE", None)
        else:
            environ["OPENBLAS_CORETYPE"] = before

STATUS_CDEF = """
typedef struct { int64_t peak_bytes; int32_t kind; char message[512]; } lt_status;
void lantern_configure(int64_t arena_bytes, int64_t max_depth);
void lantern_set_collective(void* allreduce_sum, void* ctx, int64_t world);
"""
ENTRY_CDEF = "int {symbol}(void* const* lt_in, const int64_t* lt_len, void* const* lt_out, lt_status* status);\n"

DEFAULT_ARENA_BYTES = 1 << 30
DEFAULT_MAX_DEPTH = 1_000_000


class ArenaExhausted(MemoryError):
    """The compiled function needed more arena memory than it was given."""


class LanternRuntimeError(RuntimeError):
    """An error raised by compiled code."""


_ERRORS = {1: LanternRuntimeError, 2: IndexError, 3: ArenaExhausted, 4: RecursionError, 5: KeyboardInterrupt,
           6: ZeroDivisionError, 7: OverflowError}
INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ArgSpec:
    """One input of an entry point: kind is "tensor" or "intarray"."""

    name: str
    kind: str
    shape: tuple
    dtype: str

    def describe(self) -> str:
        if self.kind == "intarray":
            return "int32[?] (IntArray)"
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


class Library:
    """A loaded shared library; one per path per process."""

    _loaded: dict = {}
    _guard = threading.Lock()

    def __init__(self, path: str, symbols: list[str]):
        import cffi

        self.ffi = cffi.FFI()
        self.ffi.cdef(STATUS_CDEF + "".join(ENTRY_CDEF.format(symbol=s) for s in symbols))
        try:
            with openblas_loading():
                self.lib = self.ffi.dlopen(str(path))
        except OSError as e:
            raise ImportError(
                f"cannot load compiled module {path}: {e}. Delete it (or the cache folder "
                "LANTERN_CACHE_DIR, default ~/.cache/lantern_stage) to rebuild it"
            ) from None
        self.lock = threading.Lock()
        self.configured = None

    @classmethod
    def load(cls, path: str, symbols: list[str]) -> "Library":
        key = (str(path), tuple(symbols))
        with cls._guard:
            if key not in cls._loaded:
                cls._loaded[key] = cls(path, symbols)
            return cls._loaded[key]


class EntryPoint:
    """A callable compiled function: numpy in, numpy out."""

    def __init__(self, library: Library, symbol: str, name: str, inputs: list[ArgSpec],
                 outputs: list[tuple[tuple, str]], unflatten, arena_bytes=DEFAULT_ARENA_BYTES,
                 max_depth=DEFAULT_MAX_DEPTH, captures=(), arguments=None):
        self.library = library
        self.symbol = symbol
        self.name = name
        self.inputs = inputs  # one ArgSpec per leaf array
        # (name, structure) per argument: "leaf", or a nested dict / tuple / list of
        # leaves (see flatten_arguments); by default every input is one argument
        self.arguments = [(s.name, "leaf") for s in inputs] if arguments is None else list(arguments)
        self._names = [n for n, _ in self.arguments]
        self._nested = any(tree != "leaf" for _, tree in self.arguments)
        self.outputs = outputs
        self.unflatten = unflatten
        self.arena_bytes = arena_bytes
        self.max_depth = max_depth
        # (holder, shape, dtype): arrays read through `holder` at every call
        self.captures = [(holder, tuple(shape), np.dtype(dtype)) for holder, shape, dtype in captures]
        self.last_peak_bytes = 0
        self._fn = getattr(library.lib, symbol)

    def check_args(self, args, kwargs) -> list[np.ndarray]:
        specs, names = self.inputs, self._names
        if len(args) > len(names):
            raise TypeError(f"{self.name}() takes {len(names)} arguments ({self.signature()}), got {len(args)}")
        values = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{self.name}() got an unexpected argument {k!r}; expected {self.signature()}")
            if k in values:
                raise TypeError(f"{self.name}() got argument {k!r} twice")
            values[k] = v
        missing = [n for n in names if n not in values]
        if missing:
            raise TypeError(f"{self.name}() missing argument(s) {', '.join(map(repr, missing))}; expected {self.signature()}")
        if self._nested:
            leaves = flatten_arguments(self.name, self.arguments, [values[n] for n in names])
        else:
            leaves = [values[n] for n in names]
        arrays = [check_arg(self.name, s, v) for s, v in zip(specs, leaves)]
        for holder, shape, dtype in self.captures:
            array = holder.lantern_array() if hasattr(holder, "lantern_array") else holder
            # Every call: an array can be resized, reshaped or re-typed in place
            # (`a.resize(...)`, `a.shape = ...`, `a.dtype = ...`) and stay the same
            # object.  Its layout and writability are checked by call_raw's
            # from_buffer; here shape and dtype (identity: numpy's builtin dtypes
            # are singletons; anything else takes the full check).
            if type(array) is not np.ndarray or array.dtype is not dtype or array.shape != shape:
                check_captured(self.name, holder, shape, dtype)
            arrays.append(array)
        return arrays

    def signature(self) -> str:
        leaves = iter(s.describe() for s in self.inputs)
        return ", ".join(f"{name}: {describe_tree(tree, leaves)}" for name, tree in self.arguments)

    def __call__(self, *args, **kwargs):
        arrays = self.check_args(args, kwargs)
        outs = [np.empty(shape, dtype) for shape, dtype in self.outputs]
        return self.unflatten(self.call_raw(arrays, outs))

    def call_raw(self, arrays: list[np.ndarray], outs: list[np.ndarray]) -> list[np.ndarray]:
        ffi = self.library.ffi
        # from_buffer: a pointer to the array's data, 5x cheaper than .ctypes.data
        n = len(self.inputs)
        try:  # captured arrays (after the inputs) are written in place: C-contiguous and writable
            ptrs = [ffi.from_buffer(a) for a in arrays[:n]] + [ffi.from_buffer(a, require_writable=True)
                                                               for a in arrays[n:]]
        except (ValueError, TypeError, BufferError):
            for holder, shape, dtype in self.captures:
                check_captured(self.name, holder, shape, dtype)
            raise
        in_ptrs = ffi.new("void*[]", ptrs or [ffi.NULL])
        lens = ffi.new("int64_t[]", [a.shape[0] if a.ndim == 1 else 0 for a in arrays] or [0])
        out_ptrs = ffi.new("void*[]", [ffi.from_buffer(o) for o in outs] or [ffi.NULL])
        status = ffi.new("lt_status*")
        lib = self.library
        with lib.lock:
            config = (self.arena_bytes, self.max_depth)
            if lib.configured != config:
                lib.lib.lantern_configure(*config)
                lib.configured = config
            kind = self._fn(in_ptrs, lens, out_ptrs, status)
        self.last_peak_bytes = int(status.peak_bytes)
        if kind:
            message = ffi.string(status.message).decode(errors="replace")
            raise _ERRORS.get(kind, LanternRuntimeError)(f"{self.name}: {message}")
        return outs


# ---------------------------------------------------------------- nested arguments
# An argument annotated with a dict / tuple / list of types is passed as the
# matching nested structure of arrays.  Its structure is kept in the JSON form a
# compiled package's manifest stores: "leaf", "none", or {"kind": "dict" |
# "tuple" | "list", "children": [...], "keys": [...] (dicts)}.  Leaves are named
# by their path: params["w"], layers[0]["b"].
def leaf_path(name: str, keys) -> str:
    return name + "".join(f'["{k}"]' if isinstance(k, str) else f"[{k}]" for k in keys)


def flatten_arguments(fn_name: str, arguments, values) -> list:
    """The leaves of each argument value, in order, after checking that the
    value has its argument's structure (TypeError / ValueError naming the path)."""
    leaves: list = []
    for (name, tree), value in zip(arguments, values):
        # A worklist, so deep nesting cannot exhaust Python's stack.
        work = [(tree, value, name)]
        while work:
            tree, value, path = work.pop()
            if tree == "leaf":
                leaves.append(value)
                continue
            where = f"{fn_name}() argument {path!r}"
            if tree == "none":
                if value is not None:
                    raise TypeError(f"{where}: expected None, got {type(value).__name__}")
                continue
            children, kind = tree["children"], tree["kind"]
            if kind == "dict":
                keys = tree["keys"]
                if not isinstance(value, dict):
                    raise TypeError(f"{where}: expected a dict with keys {', '.join(map(repr, keys))}, "
                                    f"got {type(value).__name__}")
                missing = [k for k in keys if k not in value]
                unexpected = [k for k in value if k not in keys]
                if missing or unexpected:
                    raise ValueError(f"{where}: " + "; ".join(
                        text for text in (missing and f"missing key(s) {', '.join(map(repr, missing))}",
                                          unexpected and f"unexpected key(s) {', '.join(map(repr, unexpected))}")
                        if text))
                items = [(c, value[k], leaf_path(path, [k])) for k, c in zip(keys, children)]
            else:
                if not isinstance(value, (tuple, list)):
                    raise TypeError(f"{where}: expected a {kind} of {len(children)}, got {type(value).__name__}")
                if len(value) != len(children):
                    raise ValueError(f"{where}: expected a {kind} of {len(children)}, got {len(value)} items")
                items = [(c, v, leaf_path(path, [i])) for i, (c, v) in enumerate(zip(children, value))]
            work.extend(reversed(items))
    return leaves


def describe_tree(tree, leaves) -> str:
    """`tree` (the JSON form) with each leaf replaced by the next string of `leaves`."""
    if tree == "leaf":
        return next(leaves)
    if tree == "none":
        return "None"
    parts = [describe_tree(c, leaves) for c in tree["children"]]
    if tree["kind"] == "dict":
        return "{" + ", ".join(f'"{k}": {p}' for k, p in zip(tree["keys"], parts)) + "}"
    if tree["kind"] == "tuple":
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    return "[" + ", ".join(parts) + "]"


def check_captured(fn_name: str, holder, shape, dtype) -> np.ndarray:
    """A captured array must still have the shape and dtype it was staged with:
    compiled code reads and writes it in place."""
    array = holder.lantern_array() if hasattr(holder, "lantern_array") else holder
    name = getattr(holder, "lantern_name", None) or "a captured array"
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        got = f"{array.dtype}{list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{fn_name}(): {name} was staged as {dtype}{list(shape)} but is now {got}")
    if not array.flags.c_contiguous:
        raise ValueError(
            f"{fn_name}(): {name} {dtype}{list(shape)} used by the staged code is not C-contiguous "
            "(a transposed or strided numpy view?); compiled code reads it in place, so pass "
            "np.ascontiguousarray(...) of it instead"
        )
    if not array.flags.writeable:
        raise ValueError(
            f"{fn_name}(): {name} {dtype}{list(shape)} used by the staged code is read-only; "
            "compiled code uses it in place, so pass a writable copy (np.array(...)) instead"
        )
    return array


def check_arg(fn_name: str, spec: ArgSpec, value) -> np.ndarray:
    where = f"{fn_name}() argument {spec.name!r}"
    if type(value) is not np.ndarray and isinstance(value, np.ndarray) and isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{where}: a masked array (its mask would be ignored); pass .filled(value) or .data")
    if spec.kind == "intarray":
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{where}: expected a 1-D int32 numpy array, got {type(value).__name__}")
        if value.dtype != np.int32:
            raise TypeError(f"{where}: expected dtype int32, got {value.dtype}")
        if value.ndim != 1:
            raise ValueError(f"{where}: expected a 1-D array, got shape {value.shape}")
        if value.shape[0] > INT32_MAX:  # compiled code indexes it and reads .length as int32
            raise ValueError(f"{where}: an IntArray of {value.shape[0]} elements is longer than 2**31-1")
        if not value.flags.c_contiguous:
            raise ValueError(f"{where}: array is not contiguous; pass np.ascontiguousarray(...)")
        return value
    dtype = np.dtype(spec.dtype)
    if spec.shape == () and not isinstance(value, np.ndarray) and isinstance(value, (bool, int, float, complex, np.generic)):
        return _scalar(where, dtype, value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{where}: expected a numpy array {spec.describe()}, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{where}: expected dtype {spec.dtype}, got {value.dtype} (convert with .astype(np.{spec.dtype}))")
    if value.shape != tuple(spec.shape):
        raise ValueError(f"{where}: expected shape {tuple(spec.shape)}, got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{where}: array is not C-contiguous; pass np.ascontiguousarray(...)")
    if dtype.kind == "b" and value.size and value.view(np.uint8).max() > 1:
        # A uint8 buffer viewed as bool: C++ would add its raw bytes.  numpy
        # reads any nonzero byte as True; so does the copy passed instead.
        value = value.view(np.uint8) != 0
    return value


def _scalar(where: str, dtype: np.dtype, value) -> np.ndarray:
    """A Python or numpy scalar for a 0-d input, converted only when exact
    enough: no strings, no complex, nothing out of the dtype's range."""
    if isinstance(value, (complex, np.complexfloating)):
        raise TypeError(f"{where}: expected a real number, got complex {value!r} (its imaginary part would be dropped)")
    if not isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        raise TypeError(f"{where}: expected a number or a 0-d numpy array, got {type(value).__name__} {value!r}")
    if dtype.kind in "iub" and not isinstance(value, (bool, int, np.integer, np.bool_)):
        raise TypeError(f"{where}: expected an int ({dtype}), got {type(value).__name__} {value!r}")
    if dtype.kind == "i" and not -2**31 <= int(value) < 2**31:
        raise ValueError(f"{where}: {value} does not fit in int32")
    if dtype.kind == "f":
        try:
            as_float = float(value)
        except OverflowError:  # a Python int beyond float64
            as_float = None
        if as_float is None or FLOAT32_MAX < abs(as_float) < float("inf"):  # would become inf
            text = str(value) if len(str(value)) <= 50 else str(value)[:12] + f"... ({len(str(value))} digits)"
            raise ValueError(f"{where}: {text} does not fit in float32 (largest {FLOAT32_MAX:.6g})")
    return np.array(value, dtype=dtype)


# ---------------------------------------------------------------- checkpoint files
# Here, not in train.py, because compiled packages (which have only this file)
# save and load the same way.
def save_arrays(path, arrays: dict) -> None:
    """Write `arrays` (name -> array) as an .npz file at exactly `path`,
    atomically: a temporary file beside it, flushed and fsynced, then renamed
    over it.  A process killed while saving leaves the previous file intact."""
    import os
    import tempfile

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.array(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it; mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a power loss once the folder is synced
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read_arrays(path) -> dict:
    """name -> array from an .npz file written by `save_arrays` (or np.savez).
    `path` without its ".npz" is found too.  Anything else -- a .npy file, a
    truncated or corrupt file -- is a ValueError naming the file; arrays with
    NaN or Inf give one warning naming them."""
    import os
    import warnings
    import zipfile

    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path!r}")
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):
            raise ValueError("it holds one array (.npy), not a checkpoint (.npz) of named arrays")
        with f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:  # truncated, overwritten, not a zip
        raise ValueError(f"{path} is not a readable checkpoint (a truncated or corrupt .npz?): {e}") from None
    except Exception as e:  # zlib.error and friends from a damaged member
        raise ValueError(f"{path} is not a readable checkpoint (a corrupt .npz?): {type(e).__name__}: {e}") from None
    bad = [k for k, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        warnings.warn(f"checkpoint {path}: non-finite values (NaN or Inf) in {', '.join(bad)}", RuntimeWarning,
                      stacklevel=3)
    return arrays
