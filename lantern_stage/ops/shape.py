"""Reshaping, transposing, indexing, concatenation and constant tensors."""
from __future__ import annotations

from math import prod

import numpy as np

from .. import ir
from ..types import IntArrayType, contiguous_strides
from .registry import Placed, ShapeError, TensorType, defop


# ---------------------------------------------------------------- reshape
def _reshape_type(x, *, shape):
    if prod(shape) != x.size:
        raise ShapeError(f"cannot reshape {x} ({x.size} elements) to {tuple(shape)}")
    return TensorType(tuple(shape), x.dtype)


reshape = defop("reshape", _reshape_type, view=lambda x, *, shape: 0)


def resolve_shape(shape, size: int) -> tuple[int, ...]:
    """PyTorch's reshape arguments: ints or one tuple, with at most one -1."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = tuple(int(d) for d in shape)
    if shape.count(-1) > 1:
        raise ShapeError("only one dimension can be -1")
    if -1 in shape:
        known = prod(d for d in shape if d != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot infer -1 in {shape} for {size} elements")
        shape = tuple(size // known if d == -1 else d for d in shape)
    return shape


# ---------------------------------------------------------------- strided views
def _strided_type(x, *, shape, offset, strides):
    return TensorType(tuple(shape), x.dtype)


def _strided_forward(em, out, x, *, shape, offset, strides):
    em.map_view(ir.View(out, 0, contiguous_strides(tuple(shape))), "{0}",
                ir.View(x, offset, tuple(strides)), shape=shape)


def _strided_jvp(out, ins, tans, *, shape, offset, strides):
    return strided(tans[0], shape=shape, offset=offset, strides=strides)


def _strided_vjp(g, out, ins, needs, *, shape, offset, strides):
    # The transpose of a strided read: added back into those elements only.
    return [Placed(g, offset, tuple(strides))]


# out[idx] = x[offset + sum(idx * strides)]: transposes and non-contiguous slices.
strided = defop("strided", _strided_type, _strided_forward, jvp=_strided_jvp, vjp=_strided_vjp)


def _contiguous_view_type(x, *, shape, offset):
    return TensorType(tuple(shape), x.dtype)


# A contiguous slice (x[3], x[2:5]) aliases its input: no copy, no backward.
contiguous_slice = defop("slice", _contiguous_view_type, view=lambda x, *, shape, offset: offset)


def transpose_layout(shape, axes):
    axes = tuple(a % len(shape) for a in axes)
    if sorted(axes) != list(range(len(shape))):
        raise ShapeError(f"axes {axes} are not a permutation of {len(shape)} dimensions")
    strides = contiguous_strides(shape)
    return tuple(shape[a] for a in axes), tuple(strides[a] for a in axes)


def index_layout(shape, key):
    """(out_shape, offset, strides) of x[key] for ints, slices, None and `...`."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise ShapeError("only one ... allowed in an index")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        fill = len(shape) - (len(key) - 1 - sum(k is None for k in key))
        key = key[:i] + (slice(None),) * fill + key[i + 1:]
    n_real = sum(k is not None for k in key)
    if n_real > len(shape):
        raise ShapeError(f"too many indices ({n_real}) for shape {shape}")
    key = key + (slice(None),) * (len(shape) - n_real)
    strides = contiguous_strides(shape)
    out_shape, out_strides, offset, d = [], [], 0, 0
    for k in key:
        if k is None:
            out_shape.append(1)
            out_strides.append(0)
            continue
        n = shape[d]
        if isinstance(k, slice):
            if k.step == 0:
                raise ShapeError("slice step cannot be zero")
            start, stop, step = k.indices(n)
            length = len(range(start, stop, step))
            offset += start * strides[d] if length else 0
            out_shape.append(length)
            out_strides.append(step * strides[d])
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            k = int(k)
            if not -n <= k < n:
                raise ShapeError(f"index {k} out of range for dimension {d} of size {n}")
            offset += (k % n) * strides[d]
        else:
            raise ShapeError(f"unsupported index {k!r}: use ints, slices, None, ... or one staged int")
        d += 1
    return tuple(out_shape), offset, tuple(out_strides)


def is_contiguous(shape, strides) -> bool:
    return all(s == c for n, s, c in zip(shape, strides, contiguous_strides(shape)) if n != 1)


# ---------------------------------------------------------------- staged-int indexing
def _take_type(x, i):
    if isinstance(x, IntArrayType):
        raise ShapeError("internal: use array_read for IntArray")
    if i.shape != () or i.dtype != "int32":
        raise ShapeError(f"a staged index must be a 0-d int32, got {i}")
    if not x.shape:
        raise ShapeError("cannot index a 0-d tensor")
    return TensorType(x.shape[1:], x.dtype)


def _take_forward(em, out, x, i):
    em.prim("take_row", [out], [x, i], rows=x.shape[0], width=out.size or 1)


def _take_jvp(out, ins, tans):
    return take(tans[0], ins[1])


def _take_vjp(g, out, ins, needs):
    x, i = ins
    return [put_row(g, i, rows=x.shape[0]) if needs[0] else None, None]


def _put_row_type(g, i, *, rows):
    return TensorType((rows,) + g.shape, "float32")


def _put_row_forward(em, out, g, i, *, rows):
    em.prim("take_row_backward", [out], [g, i], rows=rows, width=g.size or 1, acc=True)


def _put_row_vjp(c, out, ins, needs, *, rows):
    return [take(c, ins[1]) if needs[0] else None, None]


# zeros with row i = g: the transpose of take (its backward kernel).
put_row = defop("put_row", _put_row_type, _put_row_forward, zeroed_output=True,
                jvp=lambda out, ins, tans, *, rows: put_row(tans[0], ins[1], rows=rows),
                vjp=_put_row_vjp)


# x[i] for a staged int i: the row is copied (with a bounds check; a negative i
# counts from the end, as in numpy); its gradient
# is added back into that row.
take = defop("take", _take_type, _take_forward, jvp=_take_jvp, vjp=_take_vjp)


def _array_read_type(a, i):
    if not isinstance(a, IntArrayType):
        raise ShapeError("internal: array_read needs an IntArray")
    if i.dtype != "int32":
        raise ShapeError(f"an IntArray index must be a staged or Python int, or an int32 tensor, got {i}")
    return TensorType(i.shape, "int32")


def _array_read_forward(em, out, a, i):
    if out.shape:
        em.prim("gather_index", [out], [a, i], n=out.size)
    else:
        em.map(out, "{0}[lt::wrap_index({1}, {0}_len, \"IntArray read\")]", ("fmt", a.name, []), i)


# a[i] of an IntArray: one element for a staged int, or an int32 tensor of i's
# shape for an int32 tensor of indices (a gather, as numpy's a[i]); every
# index bounds-checked, a negative one counting from the end.
array_read = defop("array_read", _array_read_type, _array_read_forward)


def _array_len_type(a):
    return TensorType((), "int32")


def _array_len_forward(em, out, a):
    em.map(out, "static_cast<int32_t>({0}_len)", ("fmt", a.name, []))


array_length = defop("array_length", _array_len_type, _array_len_forward)


# ---------------------------------------------------------------- concat
def _concat_type(*xs, axis):
    first = xs[0]
    nd = len(first.shape)
    if nd == 0:
        raise ShapeError("cannot concatenate 0-d tensors (use stack)")
    if not -nd <= axis < nd:
        raise ShapeError(f"axis {axis} out of range for {first}")
    axis %= nd
    for x in xs[1:]:
        if len(x.shape) != nd or any(a != b for d, (a, b) in enumerate(zip(x.shape, first.shape)) if d != axis):
            raise ShapeError(f"shapes {', '.join(str(t) for t in xs)} differ off axis {axis}")
    dtype = "float32" if any(x.dtype == "float32" for x in xs) else first.dtype
    shape = list(first.shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return TensorType(tuple(shape), dtype)


def _concat_parts(out, xs, axis):
    """For each input: the View of its block inside `out`."""
    axis %= len(out.shape)
    strides = contiguous_strides(out.shape)
    start = 0
    for x in xs:
        yield x, ir.View(out, start * strides[axis], strides), x.shape
        start += x.shape[axis]


def _concat_forward(em, out, *xs, axis):
    for x, view, shape in _concat_parts(out, xs, axis):
        em.map_view(view, "{0}", x, shape=shape)


def _concat_jvp(out, ins, tans, *, axis):
    parts = [t if t is not None else full(shape=x.shape, value=0.0, dtype="float32") for x, t in zip(ins, tans)]
    return concat(*parts, axis=axis)


def _concat_vjp(g, out, ins, needs, *, axis):
    # Each input's cotangent is its block of g (a view or a strided copy).
    from ..api import getitem

    axis %= len(out.shape)
    cts, start = [], 0
    for x, need in zip(ins, needs):
        n = x.shape[axis]
        cts.append(getitem(g, (slice(None),) * axis + (slice(start, start + n),)) if need else None)
        start += n
    return cts


concat = defop("concat", _concat_type, _concat_forward, jvp=_concat_jvp, vjp=_concat_vjp)


# ---------------------------------------------------------------- constants
def _full_type(*, shape, value, dtype):
    return TensorType(tuple(shape), dtype)


def _full_forward(em, out, *, shape, value, dtype):
    em.fill(out, value)


full = defop("full", _full_type, _full_forward)
