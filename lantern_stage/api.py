"""The user-facing tensor functions, with numpy / PyTorch argument conventions,
and the operators of `Rep`.  Compositions (mean, sigmoid-free helpers, losses
built from primitives) live here; primitives are in `ops/`."""
from __future__ import annotations

import functools
from math import prod

from .ops import elementwise as ew
from .ops import linalg, loss, reduce, shape
from .ops import nn as _nn
from .generator import default_generator as _default_generator
from .ops.registry import ShapeError, as_rep
from .staging import Rep, StagingError, staging_error
from .types import IntArrayType

# ---------------------------------------------------------------- elementwise
add, sub, mul, div = ew.add, ew.sub, ew.mul, ew.div
exp, log, sqrt, tanh, sigmoid, relu = ew.exp, ew.log, ew.sqrt, ew.tanh, ew.sigmoid, ew.relu
abs = ew.abs_  # noqa: A001 - numpy's name
maximum, minimum, where = ew.maximum, ew.minimum, ew.where
matmul = linalg.matmul
log_softmax_op, softmax_op = loss.log_softmax, loss.softmax


def neg(x):
    return ew.neg(x)


def power(x, exponent):
    if isinstance(exponent, Rep):
        raise staging_error("** needs a constant (Python number) exponent")
    return ew.pow_(x, exponent=float(exponent))


def cast(x, dtype: str):
    return ew.cast(x, dtype=dtype)


def _composite(fn):
    """A staging error inside a composition also names it, e.g.
    "mse_loss: sub: shapes (3, 4), (4, 3) do not broadcast"."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StagingError as e:
            raise StagingError(f"{fn.__name__}: {e}") from None

    return wrapped


# ---------------------------------------------------------------- reductions
def _axes(x: Rep, axis, name: str) -> tuple[int, ...]:
    nd = len(x.shape)
    if axis is None:
        return tuple(range(nd))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        if not -nd <= a < nd:
            raise staging_error(f"{name}: axis {a} out of range for a tensor of shape {x.shape}")
        out.append(a % nd)
    return tuple(sorted(set(out)))


def _reduce(op, x, axis, keepdims):
    x = as_rep(x)
    axes = _axes(x, axis, op.name)
    if not axes:
        return x
    if axis is None and not keepdims and x.shape:
        return op(reshape(x, (x.size,)), axis=0, keepdims=False)
    out = x
    for a in reversed(axes):
        out = op(out, axis=a, keepdims=keepdims)
    return out


def sum(x, axis=None, keepdims=False):  # noqa: A001 - numpy's name
    return _reduce(reduce.sum_axis, x, axis, keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001 - numpy's name
    return _reduce(reduce.max_axis, x, axis, keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001 - numpy's name
    """numpy's min / torch.amin: elements equal to the minimum share its gradient."""
    return _reduce(reduce.min_axis, x, axis, keepdims)


def argmax(x, axis=None, keepdims=False):
    """numpy's argmax: int32 indices of the first maximum along `axis` (of the
    flattened tensor for axis=None); no gradient."""
    x = as_rep(x)
    if not x.shape:
        raise staging_error("argmax of a 0-d tensor")
    if axis is None:
        if not keepdims:
            return reduce.argmax_axis(reshape(x, (x.size,)), axis=0, keepdims=False)
        # a 1-element buffer (a 0-d int is held by value and cannot be re-viewed)
        return reshape(reduce.argmax_axis(reshape(x, (1, x.size)), axis=1, keepdims=False), (1,) * len(x.shape))
    if not isinstance(axis, int):
        raise staging_error(f"argmax: axis must be an int or None, got {axis!r}")
    if not -len(x.shape) <= axis < len(x.shape):
        raise staging_error(f"argmax: axis {axis} out of range for a tensor of shape {x.shape}")
    return reduce.argmax_axis(x, axis=axis % len(x.shape), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    x = as_rep(x)
    count = prod(x.shape[a] for a in _axes(x, axis, "mean"))
    return div(sum(x, axis, keepdims), float(count))


# ---------------------------------------------------------------- shapes
def reshape(x, *shape):
    x = as_rep(x)
    try:
        shape = shape_mod_resolve(shape, x.size)
    except ShapeError as e:
        raise staging_error(f"reshape: {e}") from None
    if shape == x.shape:
        return x
    return shape_reshape(x, shape=shape)


shape_mod_resolve = shape.resolve_shape
shape_reshape = shape.reshape


def transpose(x, axes=None):
    x = as_rep(x)
    axes = tuple(reversed(range(len(x.shape)))) if axes is None else tuple(axes)
    try:
        out_shape, strides = shape.transpose_layout(x.shape, axes)
    except ShapeError as e:
        raise staging_error(f"transpose: {e}") from None
    if out_shape == x.shape and shape.is_contiguous(out_shape, strides):
        return x
    return shape.strided(x, shape=out_shape, offset=0, strides=strides)


def getitem(x, key):
    x = as_rep(x)
    if isinstance(x.type, IntArrayType):
        return shape.array_read(x, as_rep(key))
    if isinstance(key, Rep):
        return shape.take(x, key)
    if isinstance(key, tuple) and key and isinstance(key[0], Rep):
        return getitem(shape.take(x, key[0]), key[1:]) if len(key) > 1 else shape.take(x, key[0])
    try:
        out_shape, offset, strides = shape.index_layout(x.shape, key)
    except ShapeError as e:
        raise staging_error(f"indexing: {e}") from None
    if shape.is_contiguous(out_shape, strides):
        if out_shape == x.shape and offset == 0:
            return x
        return shape.contiguous_slice(x, shape=out_shape, offset=offset)
    return shape.strided(x, shape=out_shape, offset=offset, strides=strides)


def concat(xs, axis=0):
    xs = [as_rep(x) for x in xs]
    if not xs:
        raise staging_error("concat of an empty list")
    if len(xs) == 1:
        return xs[0]
    return shape.concat(*xs, axis=axis)


@_composite
def stack(xs, axis=0):
    xs = [as_rep(x) for x in xs]
    if not xs:
        raise staging_error("an empty list")
    nd = len(xs[0].shape) + 1
    if not -nd <= axis < nd:
        raise staging_error(f"axis {axis} out of range")
    axis %= nd
    expanded = [reshape(x, x.shape[:axis] + (1,) + x.shape[axis:]) for x in xs]
    return concat(expanded, axis)


def split(x, split_size_or_sections, axis=0):
    """PyTorch's split: equal chunks of a size, or a list of sizes."""
    x = as_rep(x)
    n = x.shape[axis]
    if isinstance(split_size_or_sections, int):
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
    if builtin_sum(sizes) != n:
        raise staging_error(f"split: sizes {sizes} do not add up to {n}")
    out, start = [], 0
    axis %= len(x.shape)
    for s in sizes:
        key = (slice(None),) * axis + (slice(start, start + s),)
        out.append(getitem(x, key))
        start += s
    return tuple(out)


builtin_sum = __builtins__["sum"] if isinstance(__builtins__, dict) else __builtins__.sum


def _shape_args(shape) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(d) for d in shape)


def full(shape, value, dtype="float32"):
    shape = _shape_args((shape,) if isinstance(shape, int) else (tuple(shape),))
    return shape_full(shape=shape, value=value, dtype=dtype)


shape_full = shape.full


def zeros(*shape, dtype="float32"):
    return shape_full(shape=_shape_args(shape), value=0, dtype=dtype)


def ones(*shape, dtype="float32"):
    return shape_full(shape=_shape_args(shape), value=1, dtype=dtype)


def zeros_like(x):
    x = as_rep(x)
    return shape_full(shape=x.shape, value=0, dtype=x.dtype)


def ones_like(x):
    x = as_rep(x)
    return shape_full(shape=x.shape, value=1, dtype=x.dtype)


# ---------------------------------------------------------------- losses
def softmax(x, axis=-1, dim=None):
    return softmax_op(x, axis=axis if dim is None else dim)


def log_softmax(x, axis=-1, dim=None):
    return log_softmax_op(x, axis=axis if dim is None else dim)


def nll_loss(logp, target, reduction="mean"):
    return loss.nll_loss(logp, target, reduction=reduction)


@_composite
def cross_entropy(logits, target, reduction="mean"):
    """torch.nn.functional.cross_entropy with class-index targets."""
    return nll_loss(log_softmax(logits, -1), target, reduction)


@_composite
def mse_loss(a, b, reduction="mean"):
    if reduction not in ("mean", "sum"):
        raise staging_error(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    sq = power(sub(a, b), 2)
    return mean(sq) if reduction == "mean" else sum(sq)


# ---------------------------------------------------------------- neural-network layers
def linear(x, weight, bias=None):
    """torch.nn.functional.linear: x @ weight.T + bias, weight [out, in]."""
    y = _nn.linear(x, weight)
    return y if bias is None else add(y, bias)


def _pair(v, what: str) -> tuple[int, int]:
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or not all(isinstance(d, int) for d in pair):
        raise staging_error(f"{what} must be an int or a pair of ints, got {v!r}")
    return pair


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """torch.nn.functional.conv2d, NCHW, groups = 1."""
    ins = (x, weight) if bias is None else (x, weight, bias)
    return _nn.conv2d(*ins, stride=_pair(stride, "stride"), padding=_pair(padding, "padding"))


def _pool_args(kernel_size, stride, what):
    k = _pair(kernel_size, f"{what}: kernel_size")
    s = k if stride is None else _pair(stride, f"{what}: stride")
    if k[0] != k[1] or s[0] != s[1]:
        raise staging_error(f"{what}: only square kernels and equal strides, got {kernel_size} and {stride}")
    return dict(kernel=k[0], stride=s[0])


def max_pool2d(x, kernel_size, stride=None):
    """torch.nn.functional.max_pool2d without padding (stride defaults to the kernel)."""
    x = as_rep(x)
    return _nn.pool_gather(x, _nn.pool_argmax(x, **_pool_args(kernel_size, stride, "max_pool2d")))


def avg_pool2d(x, kernel_size, stride=None):
    """torch.nn.functional.avg_pool2d without padding (stride defaults to the kernel)."""
    return _nn.avg_pool2d(x, **_pool_args(kernel_size, stride, "avg_pool2d"))


def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout: zero each element with probability p, scale the rest
    by 1/(1-p).  The mask is drawn in C++ from `generator` (default: the one
    `lt.manual_seed` seeds) at every call, and reused by the backward pass."""
    x = as_rep(x)
    if not 0.0 <= p <= 1.0:
        raise staging_error(f"dropout: probability {p} not in [0, 1]")
    if not training or p == 0:
        return x
    gen = _default_generator if generator is None else generator
    return mul(x, _nn.dropout_mask(gen, shape=x.shape, p=float(p)))


def embedding(table, idx):
    """Rows of `table` [rows, width] at int32 indices `idx` of any shape:
    the result is idx.shape + (width,); the gradient is scatter-added."""
    return _nn.embedding(table, idx)


assign = _nn.assign


# ---------------------------------------------------------------- Rep operators
def _install_operators():
    # Ops are callable objects, not functions, so wrap them to bind as methods.
    def fwd(fn):
        return lambda self, other: fn(self, other)

    def rev(fn):
        return lambda self, other: fn(other, self)

    for names, fn in [
        (("__add__", "__radd__"), add), (("__sub__", "__rsub__"), sub),
        (("__mul__", "__rmul__"), mul), (("__truediv__", "__rtruediv__"), div),
        (("__floordiv__", "__rfloordiv__"), ew.floordiv), (("__mod__", "__rmod__"), ew.mod),
        (("__matmul__", "__rmatmul__"), matmul),
    ]:
        setattr(Rep, names[0], fwd(fn))
        setattr(Rep, names[1], rev(fn))
    for name, fn in [
        ("__lt__", ew.less), ("__le__", ew.less_equal), ("__gt__", ew.greater),
        ("__ge__", ew.greater_equal), ("__eq__", ew.equal), ("__ne__", ew.not_equal),
        ("__and__", ew.logical_and), ("__or__", ew.logical_or),
    ]:
        setattr(Rep, name, fwd(fn))
    Rep.__pow__ = power
    Rep.__neg__ = neg
    Rep.__pos__ = lambda self: self
    Rep.__abs__ = lambda self: abs(self)
    Rep.__hash__ = object.__hash__
    Rep.__getitem__ = getitem
    Rep.T = property(lambda self: transpose(self))
    Rep.reshape = reshape
    Rep.view = reshape
    Rep.transpose = lambda self, *axes: transpose(self, _axes_arg(axes))
    Rep.permute = Rep.transpose
    Rep.sum = lambda self, axis=None, keepdims=False: sum(self, axis, keepdims)
    Rep.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
    Rep.max = lambda self, axis=None, keepdims=False: max(self, axis, keepdims)
    Rep.min = lambda self, axis=None, keepdims=False: min(self, axis, keepdims)
    Rep.argmax = lambda self, axis=None, keepdims=False: argmax(self, axis, keepdims)
    for name, fn in [("exp", exp), ("log", log), ("tanh", tanh), ("sigmoid", sigmoid), ("relu", relu)]:
        setattr(Rep, name, (lambda f: lambda self: f(self))(fn))
    Rep.length = property(lambda self: shape.array_length(self))
    Rep.astype = cast


def _axes_arg(axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        return tuple(axes[0])
    return tuple(axes) or None


_install_operators()

# The public functions: everything defined here but the imported helpers.
__all__ = [n for n in dir() if not n.startswith("_") and n not in (
    "annotations", "prod", "IntArrayType", "ShapeError", "ew", "linalg", "loss", "reduce", "shape",
    "staging_error", "builtin_sum", "Rep", "as_rep", "functools", "StagingError")]
