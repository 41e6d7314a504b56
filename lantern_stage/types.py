"""Static types of staged values, and the annotations users write for them.

`Tensor[32, 10]` is a float32 tensor of static shape (32, 10);
`Tensor[32, "int32"]` an int32 one.  `Int` is a staged int32 scalar and
`IntArray` an int32 vector whose length is only known at run time (index
data such as tree children).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import lru_cache
from math import prod

import numpy as np

DTYPES = ("float32", "int32", "bool")
CPP_TYPE = {"float32": "float", "int32": "int32_t", "bool": "bool"}
ITEMSIZE = {"float32": 4, "int32": 4, "bool": 1}
# The largest buffer a staged value may need: byte counts and the element
# indices of generated loops are signed 64-bit (C++ `long`); the arena adds
# up to 64 bytes of alignment.
MAX_BYTES = 2**63 - 1 - 64
NUMPY_DTYPE = {"float32": "float32", "int32": "int32", "bool": "bool"}


@dataclass(frozen=True)
class TensorType:
    """The static type of a staged tensor: a shape and a dtype.  `lt.Int` and
    `lt.Float` are the 0-d ones (int32, float32 scalars)."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")
        for d in self.shape:
            if not isinstance(d, int) or d < 0:
                raise ValueError(f"bad dimension {d!r} in shape {self.shape}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * ITEMSIZE[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype == "float32"

    def too_large(self) -> str | None:
        """Why a buffer of this type cannot exist, or None."""
        if self.nbytes <= MAX_BYTES:
            return None
        return (f"{self} has {self.size} elements ({self.nbytes} bytes): more than a 64-bit "
                f"byte count holds (at most {MAX_BYTES} bytes)")

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class IntArrayType:
    """A 1-D int32 array of run-time length."""

    dtype: str = "int32"

    @property
    def is_float(self) -> bool:
        return False

    def __str__(self) -> str:
        return "int32[?]"


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def covers_once(shape, strides, size: int) -> bool:
    """A view (offset 0) of `shape` with `strides` visits each of `size`
    elements exactly once: sorted by stride, its dimensions form a packed
    layout (a permutation of a contiguous one counts too)."""
    step = 1
    for s, n in sorted((s, n) for s, n in zip(strides, shape) if n != 1):
        if s != step:
            return False
        step *= n
    return step == size


# Views compared element by element (`views_disjoint`, `views_cover_once`)
# have at most this many elements; larger ones count as overlapping.
ENUMERABLE_VIEW = 1 << 16


def _view_elements(offset: int, strides, shape):
    """Element indices a view visits, in loop order (repeats kept), or None
    past ENUMERABLE_VIEW elements."""
    if prod(shape) > ENUMERABLE_VIEW:
        return None
    idx = np.full((), offset, dtype=np.int64)
    for s, n in zip(strides, shape):
        idx = idx[..., None] + s * np.arange(n, dtype=np.int64)
    return idx.reshape(-1)


def _view_range(offset: int, strides, shape) -> tuple[int, int]:
    lo = hi = offset
    for s, n in zip(strides, shape):
        lo, hi = (lo + s * (n - 1), hi) if s < 0 else (lo, hi + s * (n - 1))
    return lo, hi


@lru_cache(maxsize=8192)
def views_disjoint(shape: tuple, a: tuple, b: tuple) -> bool:
    """Views a = (offset, strides) and b of one buffer, over the loop index
    space `shape`, share no element (the gate slices [:, 0:H], [:, H:2H] of
    rows of 4H do not)."""
    (lo_a, hi_a), (lo_b, hi_b) = _view_range(*a, shape), _view_range(*b, shape)
    if hi_a < lo_b or hi_b < lo_a:
        return True
    ea, eb = _view_elements(*a, shape), _view_elements(*b, shape)
    if ea is None or eb is None:
        return False
    return not np.intersect1d(ea, eb).size


def views_cover_once(shape: tuple, views, size: int) -> bool:
    """The views (offset, strides) over `shape` together visit each of `size`
    elements exactly once."""
    parts = [_view_elements(off, strides, shape) for off, strides in views]
    if any(p is None for p in parts):
        return False
    every = np.sort(np.concatenate(parts))
    return every.size == size and bool((every == np.arange(size)).all())


class _TensorAnnotation(type):
    """`Tensor[d0, d1, ...]` and `Tensor[d0, ..., "int32"]` build a TensorType."""

    def __getitem__(cls, item) -> TensorType:
        items = item if isinstance(item, tuple) else (item,)
        dtype = "float32"
        if items and isinstance(items[-1], str):
            dtype, items = items[-1], items[:-1]
        for d in items:
            if isinstance(d, bool) or not isinstance(d, numbers.Integral):
                raise TypeError(f"lt.Tensor[{', '.join(map(repr, items))}]: dimension {d!r} is not an int")
        return TensorType(tuple(int(d) for d in items), dtype)


class Tensor(metaclass=_TensorAnnotation):
    """Annotation for staged tensor inputs: `lt.Tensor[32, 10]`, `lt.Tensor[32, "int32"]`."""


Int = TensorType((), "int32")
Float = TensorType((), "float32")


class IntArray:
    """Annotation for a run-time-length int32 vector input."""

    type = IntArrayType()


def annotation_type(annotation, where: str):
    """The static type an input annotation denotes -- or, for a dict / tuple /
    list of annotations, the same nesting of types -- or a TypeError saying what
    is wrong and where."""
    if isinstance(annotation, dict):
        for k in annotation:
            if not isinstance(k, str):
                raise TypeError(f"{where}: the keys of a dict annotation must be strings, got {k!r}")
        return {k: annotation_type(a, f'{where}["{k}"]') for k, a in annotation.items()}
    if isinstance(annotation, (tuple, list)):
        return type(annotation)(annotation_type(a, f"{where}[{i}]") for i, a in enumerate(annotation))
    if isinstance(annotation, TensorType) and annotation.too_large():
        raise TypeError(f"{where}: {annotation.too_large()}")
    if isinstance(annotation, (TensorType, IntArrayType)):
        return annotation
    if annotation is IntArray:
        return IntArray.type
    if annotation is Tensor:
        raise TypeError(f"{where}: annotate with a shape, e.g. lt.Tensor[32, 10]")
    raise TypeError(
        f"{where}: annotation {annotation!r} is not a staged type; "
        "use lt.Tensor[d0, d1, ...], lt.Tensor[..., 'int32'], lt.Int, lt.Float, lt.IntArray, "
        "or a dict / tuple / list of them"
    )


def value_type(value, where: str):
    """The static type of a call's argument, for a function without annotations:
    a float32 / int32 / bool numpy array is a tensor of its shape; a Python or
    numpy number a 0-d one (bool, int -> int32, float -> float32); a dict /
    tuple / list the same nesting of types (dict keys sorted, as JAX does, so
    the order they were inserted in does not make a new signature)."""
    if isinstance(value, np.ndarray):
        dtype = str(value.dtype)
        if dtype not in DTYPES:
            raise TypeError(f"{where}: a {dtype} array cannot be staged; convert it with .astype(np.float32) "
                            "(or np.int32 for indices)")
        return TensorType(tuple(int(d) for d in value.shape), dtype)
    if isinstance(value, (bool, np.bool_)):
        return TensorType((), "bool")
    if isinstance(value, (int, np.integer)):
        return TensorType((), "int32")
    if isinstance(value, (float, np.floating)):
        return TensorType((), "float32")
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"{where}: the keys of a dict argument must be strings, got {k!r}")
        return {k: value_type(value[k], f'{where}["{k}"]') for k in sorted(value)}
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(value_type(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(
        f"{where}: cannot take a staged type from {type(value).__name__}; pass numpy arrays (float32, int32, "
        "bool), numbers, or dicts / tuples / lists of them -- or annotate the parameter"
    )


def format_type(t) -> str:
    """A type, or a nesting of them, as text: {"w": float32[4,4], "b": float32[4]}."""
    if isinstance(t, dict):
        return "{" + ", ".join(f'"{k}": {format_type(v)}' for k, v in t.items()) + "}"
    if isinstance(t, tuple):
        return "(" + ", ".join(format_type(v) for v in t) + ("," if len(t) == 1 else "") + ")"
    if isinstance(t, list):
        return "[" + ", ".join(format_type(v) for v in t) + "]"
    return str(t)
