"""Loading compiled modules through cffi and calling their entry points.

Every argument is checked (dtype, shape, contiguity) before it reaches C++;
outputs are numpy arrays allocated here and written by C++ in place; a C++
error comes back as a status and is raised as a Python exception.
This module needs only numpy and cffi, so compiled packages can use it
without the rest of lantern_stage.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

STATUS_CDEF = """
typedef struct { int64_t peak_bytes; int32_t kind; char message[512]; } lt_status;
void lantern_configure(int64_t arena_bytes, int64_t max_depth);
"""
ENTRY_CDEF = "int {symbol}(void* const* lt_in, const int64_t* lt_len, void* const* lt_out, lt_status* status);\n"

DEFAULT_ARENA_BYTES = 1 << 30
DEFAULT_MAX_DEPTH = 1_000_000


class ArenaExhausted(MemoryError):
    """The compiled function needed more arena memory than it was given."""


class LanternRuntimeError(RuntimeError):
    """An error raised by compiled code."""


_ERRORS = {1: LanternRuntimeError, 2: IndexError, 3: ArenaExhausted, 4: RecursionError,
           6: ZeroDivisionError, 7: OverflowError}


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
                 max_depth=DEFAULT_MAX_DEPTH, captures=()):
        self.library = library
        self.symbol = symbol
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.unflatten = unflatten
        self.arena_bytes = arena_bytes
        self.max_depth = max_depth
        # (holder, shape, dtype): arrays read through `holder` at every call
        self.captures = list(captures)
        self._checked = [None] * len(self.captures)  # the array last checked per capture
        self.last_peak_bytes = 0
        self._fn = getattr(library.lib, symbol)

    def check_args(self, args, kwargs) -> list[np.ndarray]:
        specs = self.inputs
        if len(args) > len(specs):
            raise TypeError(f"{self.name}() takes {len(specs)} arguments ({self.signature()}), got {len(args)}")
        values = dict(zip((s.name for s in specs), args))
        for k, v in kwargs.items():
            if k not in {s.name for s in specs}:
                raise TypeError(f"{self.name}() got an unexpected argument {k!r}; expected {self.signature()}")
            if k in values:
                raise TypeError(f"{self.name}() got argument {k!r} twice")
            values[k] = v
        missing = [s.name for s in specs if s.name not in values]
        if missing:
            raise TypeError(f"{self.name}() missing argument(s) {', '.join(map(repr, missing))}; expected {self.signature()}")
        arrays = [check_arg(self.name, s, values[s.name]) for s in specs]
        for k, (holder, shape, dtype) in enumerate(self.captures):
            array = holder.lantern_array() if hasattr(holder, "lantern_array") else holder
            if array is not self._checked[k]:  # the same array as last call passed then
                check_captured(self.name, holder, shape, dtype)
                self._checked[k] = array
            arrays.append(array)
        return arrays

    def signature(self) -> str:
        return ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)

    def __call__(self, *args, **kwargs):
        arrays = self.check_args(args, kwargs)
        outs = [np.empty(shape, dtype) for shape, dtype in self.outputs]
        return self.unflatten(self.call_raw(arrays, outs))

    def call_raw(self, arrays: list[np.ndarray], outs: list[np.ndarray]) -> list[np.ndarray]:
        ffi = self.library.ffi
        # from_buffer: a pointer to the array's data, 5x cheaper than .ctypes.data
        in_ptrs = ffi.new("void*[]", [ffi.from_buffer(a) for a in arrays] or [ffi.NULL])
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
    if spec.kind == "intarray":
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{where}: expected a 1-D int32 numpy array, got {type(value).__name__}")
        if value.dtype != np.int32:
            raise TypeError(f"{where}: expected dtype int32, got {value.dtype}")
        if value.ndim != 1:
            raise ValueError(f"{where}: expected a 1-D array, got shape {value.shape}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{where}: array is not contiguous; pass np.ascontiguousarray(...)")
        return value
    dtype = np.dtype(spec.dtype)
    if spec.shape == () and isinstance(value, (bool, int, float, np.generic)) and not isinstance(value, np.ndarray):
        if dtype.kind in "iub" and not isinstance(value, (bool, int, np.integer, np.bool_)):
            raise TypeError(f"{where}: expected an int (int32), got {type(value).__name__} {value!r}")
        if dtype.kind == "i" and not -2**31 <= int(value) < 2**31:
            raise ValueError(f"{where}: {value} does not fit in int32")
        return np.array(value, dtype=dtype)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{where}: expected a numpy array {spec.describe()}, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{where}: expected dtype {spec.dtype}, got {value.dtype} (convert with .astype(np.{spec.dtype}))")
    if value.shape != tuple(spec.shape):
        raise ValueError(f"{where}: expected shape {tuple(spec.shape)}, got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{where}: array is not C-contiguous; pass np.ascontiguousarray(...)")
    return value
