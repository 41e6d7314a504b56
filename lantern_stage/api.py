"""The user-facing tensor functions, with numpy / PyTorch argument conventions,
and the operators of `Rep`.  Compositions (mean, sigmoid-free helpers, losses
built from primitives) live here; primitives are in `ops/`."""
from __future__ import annotations

import functools
from math import prod

from . import einsum as _einsum
from .ops import elementwise as ew
from .ops import linalg, loss, reduce, shape
from .ops import nn as _nn
from .generator import default_generator as _default_generator
from .ops.registry import ShapeError, as_rep
from .staging import Rep, StagingError, staging_error
from .types import IntArrayType

# ---------------------------------------------------------------- elementwise
# The public names of primitive ops are functions, so that each has its
# numpy-style signature and a docstring; the ops themselves are in ops/.
def add(a, b):
    """a + b, elementwise with numpy broadcasting."""
    return ew.add(a, b)


def sub(a, b):
    """a - b, elementwise with numpy broadcasting."""
    return ew.sub(a, b)


def mul(a, b):
    """a * b, elementwise with numpy broadcasting."""
    return ew.mul(a, b)


def div(a, b):
    """a / b, elementwise with numpy broadcasting (float32 result, as numpy's true division)."""
    return ew.div(a, b)


def exp(x):
    """e ** x, elementwise."""
    return ew.exp(x)


def log(x):
    """The natural logarithm, elementwise."""
    return ew.log(x)


def sqrt(x):
    """The square root, elementwise."""
    return ew.sqrt(x)


def tanh(x):
    """The hyperbolic tangent, elementwise."""
    return ew.tanh(x)


def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise."""
    return ew.sigmoid(x)


def relu(x):
    """max(x, 0), elementwise."""
    return ew.relu(x)


def abs(x):  # noqa: A001 - numpy's name
    """|x|, elementwise (gradient 0 at 0)."""
    return ew.abs_(x)


def maximum(a, b):
    """The larger of a and b, elementwise with broadcasting (a tie splits the gradient)."""
    return ew.maximum(a, b)


def minimum(a, b):
    """The smaller of a and b, elementwise with broadcasting (a tie splits the gradient)."""
    return ew.minimum(a, b)


def where(cond, a, b):
    """a where the bool mask `cond` is true, else b (numpy.where, broadcasting)."""
    return ew.where(cond, a, b)


def matmul(a, b):
    """a @ b with numpy's matmul rules (also the `@` operator)."""
    return linalg.matmul(a, b)


def einsum(subscripts, *operands):
    """numpy.einsum / torch.einsum: "ij,jk->ik", "bhqd,bhkd->bhqk", "ij->ji",
    "i,j->ij", "ii->", "ii->i", "ij->j", implicit output ("ij,jk"), "..." for
    broadcast dimensions; staged as permutations, (batched) matrix products
    and sums (module `lantern_stage.einsum`), so it is differentiable to any order."""
    return _einsum.einsum(subscripts, *operands)


def neg(x):
    """-x, elementwise."""
    return ew.neg(x)


def power(x, exponent):
    """x ** exponent for a constant (Python number) exponent, elementwise."""
    if isinstance(exponent, Rep):
        raise staging_error("** needs a constant (Python number) exponent")
    return ew.pow_(x, exponent=float(exponent))


def cast(x, dtype: str):
    """x converted to dtype "float32", "int32" or "bool" (also `x.astype(dtype)`)."""
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
    """The sum over `axis` (an int, a tuple, or None: all), as numpy.sum."""
    return _reduce(reduce.sum_axis, x, axis, keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001 - numpy's name
    """The maximum over `axis` (an int, a tuple, or None: all), as numpy.max; ties split the gradient."""
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
    """The mean over `axis` (an int, a tuple, or None: all), as numpy.mean."""
    x = as_rep(x)
    count = prod(x.shape[a] for a in _axes(x, axis, "mean"))
    return div(sum(x, axis, keepdims), float(count))


# ---------------------------------------------------------------- shapes
def reshape(x, *shape):
    """x with a new shape (one dimension may be -1), a view with no copy."""
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
    """x with its axes permuted (default: reversed), as numpy.transpose; `x.T` too."""
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
    """x[key]: ints (Python or one staged int; negative ones count from the end), slices, None, ..."""
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
    """The tensors of `xs` joined along an existing axis (numpy.concatenate)."""
    xs = [as_rep(x) for x in xs]
    if not xs:
        raise staging_error("concat of an empty list")
    if len(xs) == 1:
        return xs[0]
    return shape.concat(*xs, axis=axis)


@_composite
def stack(xs, axis=0):
    """The tensors of `xs` (one shape) joined along a new axis (numpy.stack)."""
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
    """A tensor of `shape` filled with `value`."""
    shape = _shape_args((shape,) if isinstance(shape, int) else (tuple(shape),))
    return shape_full(shape=shape, value=value, dtype=dtype)


shape_full = shape.full


def zeros(*shape, dtype="float32"):
    """A tensor of zeros: lt.zeros(3, 4) or lt.zeros((3, 4))."""
    return shape_full(shape=_shape_args(shape), value=0, dtype=dtype)


def ones(*shape, dtype="float32"):
    """A tensor of ones: lt.ones(3, 4) or lt.ones((3, 4))."""
    return shape_full(shape=_shape_args(shape), value=1, dtype=dtype)


def zeros_like(x):
    """Zeros of x's shape and dtype."""
    x = as_rep(x)
    return shape_full(shape=x.shape, value=0, dtype=x.dtype)


def ones_like(x):
    """Ones of x's shape and dtype."""
    x = as_rep(x)
    return shape_full(shape=x.shape, value=1, dtype=x.dtype)


# ---------------------------------------------------------------- losses
def softmax(x, axis=-1, dim=None):
    """exp(x) / sum(exp(x)) along `axis` (PyTorch's `dim` also accepted)."""
    return loss.softmax(x, axis=axis if dim is None else dim)


def log_softmax(x, axis=-1, dim=None):
    """log(softmax(x)) along `axis`, computed stably (PyTorch's `dim` also accepted)."""
    return loss.log_softmax(x, axis=axis if dim is None else dim)


def nll_loss(logp, target, reduction="mean"):
    """torch.nn.functional.nll_loss: -logp[n, target[n]], averaged ("mean") or summed ("sum")."""
    return loss.nll_loss(logp, target, reduction=reduction)


@_composite
def cross_entropy(logits, target, reduction="mean"):
    """torch.nn.functional.cross_entropy with class-index targets."""
    return nll_loss(log_softmax(logits, -1), target, reduction)


@_composite
def mse_loss(a, b, reduction="mean"):
    """The mean (or sum) of the squared differences, torch.nn.functional.mse_loss."""
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


# ---------------------------------------------------------------- activations, statistics
def erf(x):
    """The error function, elementwise (torch.erf)."""
    return ew.erf(x)


def sin(x):
    """Sine, elementwise."""
    return ew.sin(x)


def cos(x):
    """Cosine, elementwise."""
    return ew.cos(x)


def log1p(x):
    """log(1 + x), elementwise, accurate for small x (numpy.log1p)."""
    return ew.log1p(x)


_SQRT_2_OVER_PI = 0.7978845608028654


@_composite
def gelu(x, approximate="none"):
    """torch.nn.functional.gelu: x * Phi(x) with the normal CDF through erf,
    or PyTorch's tanh approximation (approximate="tanh")."""
    x = as_rep(x)
    if approximate == "none":
        return ew.gelu(x)
    if approximate == "tanh":
        return x * 0.5 * (tanh((x + power(x, 3) * 0.044715) * _SQRT_2_OVER_PI) + 1.0)
    raise staging_error(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


@_composite
def silu(x):
    """torch.nn.functional.silu (swish): x * sigmoid(x)."""
    return mul(x, sigmoid(x))


@_composite
def softplus(x, beta=1.0, threshold=20.0):
    """torch.nn.functional.softplus: log(1 + exp(beta x)) / beta, and x itself
    where beta x > threshold.  The exponent is clamped at the threshold, so
    the branch not taken never overflows (an inf there would turn the zero
    gradient of `where` into a NaN)."""
    x = as_rep(x)
    bx = mul(x, float(beta))
    big = ew.greater(bx, float(threshold))
    soft = div(log1p(exp(where(big, float(threshold), bx))), float(beta))
    return where(big, x, soft)



def _stat_axes(x, axis, dim, name):
    if dim is not None:
        if axis is not None:
            raise staging_error(f"{name}: give axis or dim, not both")
        axis = dim
    return _axes(x, axis, name)


@_composite
def var(x, axis=None, correction=1, keepdims=False, *, unbiased=None, dim=None):
    """torch.var: sum((x - mean)^2) / (n - correction) over `axis` (all by
    default); PyTorch's default correction=1 is the unbiased estimate
    (numpy's np.var is correction=0).  `unbiased=False` is correction=0."""
    x = as_rep(x)
    if unbiased is not None:
        correction = 1 if unbiased else 0
    axes = _stat_axes(x, axis, dim, "var")
    n = prod(x.shape[a] for a in axes)
    d = sub(x, mean(x, axes, keepdims=True))
    # n <= correction divides by zero: inf or nan, as in PyTorch.
    return div(sum(mul(d, d), axes, keepdims), float(builtin_max(n - correction, 0)))


@_composite
def std(x, axis=None, correction=1, keepdims=False, *, unbiased=None, dim=None):
    """torch.std: sqrt(var(x, ...)) with the same arguments."""
    return sqrt(var(x, axis, correction, keepdims, unbiased=unbiased, dim=dim))


builtin_max = __builtins__["max"] if isinstance(__builtins__, dict) else __builtins__.max


@_composite
def logsumexp(x, axis=None, keepdims=False, *, dim=None):
    """torch.logsumexp: log(sum(exp(x))) over `axis`, computed stably as
    m + log(sum(exp(x - m))) with m the maximum (0 where it is infinite, so
    that a row of -inf gives -inf, not nan)."""
    x = as_rep(x)
    axes = _stat_axes(x, axis, dim, "logsumexp")
    m = max(x, axes, keepdims=True)
    m = where(ew.equal(abs(m), float("inf")), 0.0, m)
    out = add(log(sum(exp(sub(x, m)), axes, keepdims=True)), m)
    if keepdims:
        return out
    return reshape(out, tuple(n for d, n in enumerate(x.shape) if d not in axes))


# ---------------------------------------------------------------- constant index tensors
def _constant(array):
    """A numpy array known while staging, passed to the compiled code like a parameter."""
    return as_rep(array)


def arange(start, stop=None, step=1, dtype=None):
    """numpy.arange / torch.arange of Python numbers: int32 when every
    argument is an int (unless dtype says otherwise), else float32."""
    import numpy as np

    if stop is None:
        start, stop = 0, start
    args = (start, stop, step)
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise staging_error(f"arange: start, stop and step must be Python numbers, got {args}")
    if step == 0:
        raise staging_error("arange: step must not be zero")
    if dtype is None:
        dtype = "int32" if all(isinstance(a, int) for a in args) else "float32"
    if dtype not in ("int32", "float32"):
        raise staging_error(f"arange: dtype must be 'int32' or 'float32', got {dtype!r}")
    values = np.arange(start, stop, step, dtype=np.float64 if dtype == "float32" else np.int64)
    return _constant(values.astype(dtype))


def _triangle(x, diagonal, keep_lower, name):
    import numpy as np

    x = as_rep(x)
    if len(x.shape) < 2:
        raise staging_error(f"{name}: needs at least 2 dimensions, got shape {x.shape}")
    if not isinstance(diagonal, int) or isinstance(diagonal, bool):
        raise staging_error(f"{name}: diagonal must be a Python int, got {diagonal!r}")
    rows, cols = x.shape[-2:]
    ones = np.ones((rows, cols), dtype=bool)
    keep = np.tril(ones, diagonal) if keep_lower else np.triu(ones, diagonal)
    return where(_constant(np.ascontiguousarray(keep)), x, 0)


def tril(x, diagonal=0):
    """torch.tril: x with the elements above the `diagonal`-th diagonal of
    its last two dimensions zeroed (`lt.tril(lt.ones(S, S))` is a causal mask)."""
    return _triangle(x, diagonal, True, "tril")


def triu(x, diagonal=0):
    """torch.triu: x with the elements below the `diagonal`-th diagonal zeroed."""
    return _triangle(x, diagonal, False, "triu")


@_composite
def one_hot(idx, num_classes, dtype="int32"):
    """torch.nn.functional.one_hot: idx.shape + (num_classes,), 1 at each
    index.  int32 by default (PyTorch's integer result); dtype="float32"
    gives a float tensor directly.  Indices outside [0, num_classes) give a
    row of zeros (PyTorch raises)."""
    idx = as_rep(idx)
    if idx.dtype != "int32":
        raise staging_error(f"one_hot: indices must be int32, got {idx.type}")
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise staging_error(f"one_hot: num_classes must be a positive Python int, got {num_classes!r}")
    hits = ew.equal(reshape(idx, idx.shape + (1,)), arange(num_classes))
    return cast(hits, dtype)


# ---------------------------------------------------------------- normalisation
@_composite
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm: normalise over the last
    len(normalized_shape) dimensions with the biased variance, then scale by
    `weight` and shift by `bias` (both of shape normalized_shape)."""
    x = as_rep(x)
    shape_ = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape_) > len(x.shape) or tuple(x.shape[len(x.shape) - len(shape_):]) != shape_:
        raise staging_error(f"layer_norm: normalized_shape {shape_} is not the end of the input shape {x.shape}")
    axes = tuple(range(len(x.shape) - len(shape_), len(x.shape)))
    d = sub(x, mean(x, axes, keepdims=True))
    y = mul(d, power(add(mean(mul(d, d), axes, keepdims=True), float(eps)), -0.5))
    if weight is not None:
        y = mul(y, weight)
    return y if bias is None else add(y, bias)


@_composite
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm over the channel axis 1 of [N, C, ...].
    training: normalise with the batch's statistics (biased variance) and,
    when running_mean / running_var are given (captured arrays), update them
    in place: r = (1 - momentum) r + momentum stat, with the unbiased batch
    variance for running_var.  Otherwise normalise with the running ones.
    `momentum` may be a staged scalar (BatchNorm's cumulative average)."""
    x = as_rep(x)
    if len(x.shape) < 2:
        raise staging_error(f"batch_norm: expects [N, C, ...], got shape {x.shape}")
    c = x.shape[1]
    axes = (0,) + tuple(range(2, len(x.shape)))
    spread = (c,) + (1,) * (len(x.shape) - 2)  # a [C] vector broadcast along axis 1
    for what, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise staging_error(f"batch_norm: {what} must have shape ({c},), got {tuple(t.shape)}")
    if training:
        n = prod(x.shape[a] for a in axes)
        if n <= 1:
            raise staging_error(f"batch_norm: expected more than one value per channel in training, got shape {x.shape}")
        mu = mean(x, axes, keepdims=True)
        d = sub(x, mu)
        sq = sum(mul(d, d), axes, keepdims=True)
        inv_std = power(add(div(sq, float(n)), float(eps)), -0.5)
        if running_mean is not None and running_var is not None:
            keep = 1.0 - momentum
            assign(running_mean, add(mul(keep, running_mean), mul(momentum, reshape(mu, (c,)))))
            assign(running_var, add(mul(keep, running_var), mul(momentum, reshape(div(sq, float(n - 1)), (c,)))))
        y = mul(d, inv_std)
    else:
        if running_mean is None or running_var is None:
            raise staging_error("batch_norm: evaluation needs running_mean and running_var (or training=True)")
        y = mul(sub(x, reshape(running_mean, spread)), power(add(reshape(running_var, spread), float(eps)), -0.5))
    if weight is not None:
        y = mul(y, reshape(weight, spread))
    return y if bias is None else add(y, reshape(bias, spread))


# ---------------------------------------------------------------- numpy on staged values
@functools.cache
def _numpy_ufuncs():
    import numpy as np

    return {
        np.add: add, np.subtract: sub, np.multiply: mul, np.true_divide: div,
        np.floor_divide: ew.floordiv, np.remainder: ew.mod, np.power: power, np.matmul: matmul,
        np.negative: neg, np.positive: lambda x: as_rep(x), np.absolute: abs,
        np.exp: exp, np.log: log, np.sqrt: sqrt, np.tanh: tanh, np.square: lambda x: power(x, 2),
        np.maximum: maximum, np.minimum: minimum,
        np.less: ew.less, np.less_equal: ew.less_equal, np.greater: ew.greater,
        np.greater_equal: ew.greater_equal, np.equal: ew.equal, np.not_equal: ew.not_equal,
        np.logical_and: ew.logical_and, np.logical_or: ew.logical_or,
    }


# numpy names whose lantern_stage counterpart is called differently.
_NUMPY_ALTERNATIVES = {
    "concatenate": "lt.concat", "dot": "lt.matmul (or @)", "tensordot": "lt.matmul (or @)",
    "amax": "lt.max", "max": "lt.max", "nanmax": "lt.max", "average": "lt.mean", "clip": "lt.minimum / lt.maximum",
    "vstack": "lt.concat / lt.stack", "hstack": "lt.concat / lt.stack", "add.reduce": "lt.sum",
    "maximum.reduce": "lt.max", "copy": "the value itself (staged values are immutable)",
    "fmax": "lt.maximum", "fmin": "lt.minimum", "divide": "lt.div (or /)",
}


def _numpy_alternative(name: str) -> str:
    if name in _NUMPY_ALTERNATIVES:
        return _NUMPY_ALTERNATIVES[name]
    if name in __all__:
        return f"lt.{name}"
    return "lt ops"


def numpy_function_error(func) -> StagingError:
    name = getattr(func, "__name__", repr(func))
    return staging_error(
        f"np.{name}() of a staged value: numpy cannot compute with values that exist only in the compiled "
        f"code; use {_numpy_alternative(name)}, or return the value from the compiled function and use "
        "numpy on the result"
    )


def numpy_ufunc(ufunc, method, inputs, kwargs):
    """Rep.__array_ufunc__: a ufunc called the plain way, with an lt op of the
    same meaning, stages that op; anything else is a StagingError."""
    op = _numpy_ufuncs().get(ufunc)
    name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
    if op is None or method != "__call__":
        raise staging_error(
            f"np.{name}() of a staged value: lantern_stage has no such op; use {_numpy_alternative(name)}, "
            "or return the value from the compiled function and use numpy on the result"
        )
    if kwargs:
        raise staging_error(
            f"np.{name}() with {', '.join(f'{k}=' for k in kwargs)} of a staged value: staged values are computed "
            "by the compiled code and never written in place; call it without them"
        )
    return op(*inputs)


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
    Rep.var = lambda self, axis=None, correction=1, keepdims=False, **kw: var(self, axis, correction, keepdims, **kw)
    Rep.std = lambda self, axis=None, correction=1, keepdims=False, **kw: std(self, axis, correction, keepdims, **kw)
    for name, fn in [("exp", exp), ("log", log), ("tanh", tanh), ("sigmoid", sigmoid), ("relu", relu),
                     ("sin", sin), ("cos", cos)]:
        setattr(Rep, name, (lambda f: lambda self: f(self))(fn))
    Rep.length = property(lambda self: shape.array_length(self))
    Rep.astype = cast


def _axes_arg(axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        return tuple(axes[0])
    return tuple(axes) or None


_install_operators()

# The public functions: everything defined here but the imported helpers and
# the aliases used inside this module (lantern_stage.__all__ lists them again).
__all__ = [n for n in dir() if not n.startswith("_") and n not in (
    "annotations", "prod", "IntArrayType", "ShapeError", "ew", "linalg", "loss", "reduce", "shape",
    "staging_error", "builtin_sum", "builtin_max", "Rep", "as_rep", "functools", "StagingError",
    "getitem", "shape_full", "shape_mod_resolve", "shape_reshape", "numpy_ufunc", "numpy_function_error")]
