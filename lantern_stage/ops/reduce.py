"""Reductions over one axis, as (outer, n, inner) kernels; several axes
reduce one after another (see `lantern_stage.api.sum`)."""
from __future__ import annotations

from math import prod

from .. import ir
from .registry import ShapeError, TensorType, defop
from ..types import contiguous_strides


def _reduce_type(x, *, axis, keepdims):
    if not -len(x.shape) <= axis < len(x.shape):
        raise ShapeError(f"axis {axis} out of range for {x}")
    axis %= len(x.shape)
    shape = list(x.shape)
    if keepdims:
        shape[axis] = 1
    else:
        del shape[axis]
    dtype = "float32" if x.dtype == "float32" else "int32"
    return TensorType(tuple(shape), dtype)


def _split(shape, axis):
    axis %= len(shape)
    return prod(shape[:axis]), shape[axis], prod(shape[axis + 1:])


def _spread_view(var: ir.Var, full_shape, axis) -> ir.View:
    """The reduced `var` read over the unreduced index space (stride 0 on `axis`)."""
    axis %= len(full_shape)
    kept = tuple(1 if d == axis else n for d, n in enumerate(full_shape))
    strides = list(contiguous_strides(kept))
    strides[axis] = 0
    return ir.View(var, 0, tuple(strides))


def _sum_forward(em, out, x, *, axis, keepdims):
    outer, n, inner = _split(x.shape, axis)
    em.prim("reduce_sum", [out], [x], outer=outer, n=n, inner=inner)


def _sum_backward(em, out, dout, ins, dins, *, axis, keepdims):
    x = ins[0]
    if dins[0] is not None:
        em.map(dins[0], "{0}", _spread_view(dout, x.shape, axis), acc=True, shape=x.shape)


def _max_forward(em, out, x, *, axis, keepdims):
    outer, n, inner = _split(x.shape, axis)
    em.prim("reduce_max", [out], [x], outer=outer, n=n, inner=inner)


def _max_backward(em, out, dout, ins, dins, *, axis, keepdims):
    # As torch.amax: elements equal to the maximum share its gradient evenly
    # (so a tie of two gets half each, as central differences say).
    x = ins[0]
    if dins[0] is None:
        return
    y = _spread_view(out, x.shape, axis)
    count = em.tmp(TensorType(out.shape), zero=True)
    em.map_view(_spread_view(count, x.shape, axis), "({0} == {1} ? 1.0f : 0.0f)", x, y, acc=True, shape=x.shape)
    em.map(
        dins[0],
        "({0} == {1} ? {2} / {3} : 0.0f)",
        x,
        y,
        _spread_view(dout, x.shape, axis),
        _spread_view(count, x.shape, axis),
        acc=True,
        shape=x.shape,
    )


def _max_type(x, *, axis, keepdims):
    out = _reduce_type(x, axis=axis, keepdims=keepdims)
    if x.shape[axis] == 0:
        raise ShapeError(f"max of an empty axis {axis} of {x} (it has no identity)")
    return out


sum_axis = defop("sum", _reduce_type, _sum_forward, _sum_backward)
max_axis = defop("max", _max_type, _max_forward, _max_backward)
