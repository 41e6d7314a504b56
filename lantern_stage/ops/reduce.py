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


def _kept(x_shape, axis):
    axis %= len(x_shape)
    return tuple(1 if d == axis else n for d, n in enumerate(x_shape))


def _spread(r, x_shape, axis):
    """A reduced value (with or without keepdims) as x's broadcastable shape."""
    from .shape import reshape

    kept = _kept(x_shape, axis)
    return r if r.shape == kept else reshape(r, shape=kept)


def _sum_jvp(out, ins, tans, *, axis, keepdims):
    return sum_axis(tans[0], axis=axis, keepdims=keepdims)


def _sum_vjp(g, out, ins, needs, *, axis, keepdims):
    from .elementwise import broadcast_to

    x = ins[0]
    return [broadcast_to(_spread(g, x.shape, axis), shape=x.shape)]


def _max_forward(em, out, x, *, axis, keepdims):
    outer, n, inner = _split(x.shape, axis)
    em.prim("reduce_max", [out], [x], outer=outer, n=n, inner=inner)


def _extremum_share(out, x, axis):
    """Where x attains the reduced extremum, 1/count (ties share), else 0:
    as torch.amax / amin and central differences."""
    from .elementwise import cast, div, equal, mul

    hit = cast(equal(x, _spread(out, x.shape, axis)), dtype="float32")
    count = sum_axis(hit, axis=axis, keepdims=True)
    return mul(hit, div(1.0, count))


def _extremum_jvp(out, ins, tans, *, axis, keepdims):
    from .elementwise import mul

    x = ins[0]
    return sum_axis(mul(tans[0], _extremum_share(out, x, axis)), axis=axis, keepdims=keepdims)


def _extremum_vjp(g, out, ins, needs, *, axis, keepdims):
    from .elementwise import mul

    x = ins[0]
    return [mul(_spread(g, x.shape, axis), _extremum_share(out, x, axis))]


def _min_forward(em, out, x, *, axis, keepdims):
    outer, n, inner = _split(x.shape, axis)
    em.prim("reduce_min", [out], [x], outer=outer, n=n, inner=inner)


def _argmax_type(x, *, axis, keepdims):
    out = _extremum_type("argmax")(x, axis=axis, keepdims=keepdims)
    return TensorType(out.shape, "int32")


def _argmax_forward(em, out, x, *, axis, keepdims):
    outer, n, inner = _split(x.shape, axis)
    em.prim("reduce_argmax", [out], [x], outer=outer, n=n, inner=inner)


def _extremum_type(name):
    def infer(x, *, axis, keepdims):
        out = _reduce_type(x, axis=axis, keepdims=keepdims)
        if x.shape[axis % len(x.shape)] == 0:
            raise ShapeError(f"{name} of an empty axis {axis} of {x} (it has no identity)")
        return out

    return infer


sum_axis = defop("sum", _reduce_type, _sum_forward, jvp=_sum_jvp, vjp=_sum_vjp)
max_axis = defop("max", _extremum_type("max"), _max_forward, jvp=_extremum_jvp, vjp=_extremum_vjp)
min_axis = defop("min", _extremum_type("min"), _min_forward, jvp=_extremum_jvp, vjp=_extremum_vjp)
# The index of the first maximum along the axis, as numpy / torch; no gradient.
argmax_axis = defop("argmax", _argmax_type, _argmax_forward)
