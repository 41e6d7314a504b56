"""Neural-network ops: linear, conv2d, pooling, dropout masks, embedding
gathers, and `assign`, the in-place write into a captured buffer that
optimizers and random generators use.

Max pooling and dropout are compositions of two ops each, so that no op
needs a buffer saved from its forward for its backward:
  max_pool2d = pool_gather(x, pool_argmax(x))   (the argmax is an int32 tensor)
  dropout    = x * dropout_mask(generator)      (the mask is an ordinary tensor,
                                                 read again by mul's backward)
The C++ kernels are in cpp_runtime/conv.h, pool.h, random.h and nn.h.
"""
from __future__ import annotations

from math import prod

from ..staging import current, staging_error, user_location
from .registry import Emitter, ShapeError, TensorType, as_rep, broadcast_shapes, defop
from .linalg import product_rule


def _need_float(what: str, t: TensorType) -> None:
    if t.dtype != "float32":
        raise ShapeError(f"{what} must be float32, got {t}")


# ---------------------------------------------------------------- linear
def _linear_type(x, w):
    _need_float("input", x)
    _need_float("weight", w)
    if len(w.shape) != 2 or not x.shape or x.shape[-1] != w.shape[1]:
        raise ShapeError(f"expects input [..., in] and weight [out, in], got {x} and {w}")
    return TensorType(x.shape[:-1] + (w.shape[0],))


def linear(x, w):
    """x @ w.T with PyTorch's [out, in] weight layout, as one gemm with a
    transpose flag (`x @ w.T` over primitives would copy the transposed
    weight every call); a single row is a gemv."""
    from ..staging import staging_error
    from .linalg import mm, mv
    from .shape import reshape

    x, w = as_rep(x), as_rep(w)
    try:
        out_type = _linear_type(x.type, w.type)
    except ShapeError as e:
        raise staging_error(f"linear: {e}") from None
    k = w.shape[1]
    m, n = x.size // k, w.shape[0]
    if m == 1:  # y[n] = w[n,k] x[k]
        y = mv(w, x, M=n, N=k, trans=False)
    else:
        y = mm(x, w, M=m, N=n, K=k, ta=False, tb=True)
    return y if y.shape == out_type.shape else reshape(y, shape=out_type.shape)


# ---------------------------------------------------------------- conv2d
def _conv2d_type(x, w, *b, stride, padding):
    _need_float("input", x)
    _need_float("weight", w)
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise ShapeError(f"expects input [N, C, H, W] and weight [F, C, KH, KW], got {x} and {w}")
    n, c, h, wd = x.shape
    f, c2, kh, kw = w.shape
    if c != c2:
        raise ShapeError(f"input has {c} channels but the weight expects {c2}: {x} and {w}")
    if b and (b[0].dtype != "float32" or b[0].shape != (f,)):
        raise ShapeError(f"bias must be float32[{f}], got {b[0]}")
    (sh, sw), (ph, pw) = stride, padding
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ShapeError(f"bad stride {stride} or padding {padding}")
    if h + 2 * ph < kh or wd + 2 * pw < kw:
        raise ShapeError(f"kernel {kh}x{kw} larger than the padded input {h + 2 * ph}x{wd + 2 * pw}")
    return TensorType((n, f, (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1))


def _conv2d_dims(x, w, stride, padding):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    return dict(N=n, C=c, H=h, W=wd, F=f, KH=kh, KW=kw,
                sh=stride[0], sw=stride[1], ph=padding[0], pw=padding[1])


def _conv2d_forward(em, out, x, w, *b, stride, padding):
    em.prim("conv2d", [out], [x, w, *b], **_conv2d_dims(x, w, stride, padding))


def _conv2d_jvp(out, ins, tans, *, stride, padding):
    from .elementwise import add
    from .shape import reshape

    x, w = ins[:2]
    terms = []
    if tans[0] is not None:
        terms.append(conv2d(tans[0], w, stride=stride, padding=padding))
    if tans[1] is not None:
        terms.append(conv2d(x, tans[1], stride=stride, padding=padding))
    if len(tans) > 2 and tans[2] is not None:
        terms.append(reshape(tans[2], shape=(1, w.shape[0], 1, 1)))
    out_t = terms[0]
    for t in terms[1:]:
        out_t = add(out_t, t)
    return out_t


def _conv2d_vjp(g, out, ins, needs, *, stride, padding):
    x, w = ins[:2]
    at = dict(stride=stride, padding=padding)
    return [conv2d_dx(g, w, in_shape=x.shape, **at) if needs[0] else None,
            conv2d_dw(x, g, w_shape=w.shape, **at) if needs[1] else None,
            *([conv2d_db(g) if needs[2] else None] if len(ins) > 2 else [])]


# NCHW, groups = 1: im2col + sgemm or direct AVX kernels (cpp_runtime/conv.h).
conv2d = defop("conv2d", _conv2d_type, _conv2d_forward, jvp=_conv2d_jvp, vjp=_conv2d_vjp)


# Its backward kernels, as ops (each adds into a zeroed output).  conv2d is
# bilinear, so each one's rules are conv2d and its two siblings:
#   <conv_dx(g, w), c> = <g, conv(c, w)>,  <conv_dw(x, g), c> = <g, conv(x, c)>.
def _dx_type(g, w, *, in_shape, stride, padding):
    return TensorType(tuple(in_shape))


def _dx_forward(em, out, g, w, *, in_shape, stride, padding):
    # The kernel's x operand is not read for dx alone: g stands in for it.
    em.prim("conv2d_backward", [out], [g, w, g], acc=True, grads=("dx",),
            **_conv2d_dims(out, w, stride, padding))


def _dx_jvp(out, ins, tans, **at):
    return product_rule(conv2d_dx, ins, tans, at)


def _dx_vjp(c, out, ins, needs, *, in_shape, stride, padding):
    g, w = ins
    at = dict(stride=stride, padding=padding)
    return [conv2d(c, w, **at) if needs[0] else None,
            conv2d_dw(c, g, w_shape=w.shape, **at) if needs[1] else None]


conv2d_dx = defop("conv2d_dx", _dx_type, _dx_forward, jvp=_dx_jvp, vjp=_dx_vjp, zeroed_output=True)


def _dw_type(x, g, *, w_shape, stride, padding):
    return TensorType(tuple(w_shape))


def _dw_forward(em, out, x, g, *, w_shape, stride, padding):
    em.prim("conv2d_backward", [out], [x, g, g], acc=True, grads=("dw",),  # w unread for dw
            **_conv2d_dims(x, out, stride, padding))


def _dw_jvp(out, ins, tans, **at):
    return product_rule(conv2d_dw, ins, tans, at)


def _dw_vjp(c, out, ins, needs, *, w_shape, stride, padding):
    x, g = ins
    at = dict(stride=stride, padding=padding)
    return [conv2d_dx(g, c, in_shape=x.shape, **at) if needs[0] else None,
            conv2d(x, c, **at) if needs[1] else None]


conv2d_dw = defop("conv2d_dw", _dw_type, _dw_forward, jvp=_dw_jvp, vjp=_dw_vjp, zeroed_output=True)


def _db_type(g):
    return TensorType((g.shape[1],))


def _db_forward(em, out, g):
    n, f, oh, ow = g.shape
    # Only the bias gradient: the kernel reads no x or w (given dy for both).
    dims = dict(N=n, C=1, H=oh, W=ow, F=f, KH=1, KW=1, sh=1, sw=1, ph=0, pw=0)
    em.prim("conv2d_backward", [out], [g, g, g], acc=True, grads=("db",), **dims)


def _db_vjp(c, out, ins, needs):
    from .elementwise import broadcast_to
    from .shape import reshape

    g = ins[0]
    return [broadcast_to(reshape(c, shape=(1, g.shape[1], 1, 1)), shape=g.shape)]


# db[f] = sum of g over n, h, w.
conv2d_db = defop("conv2d_db", _db_type, _db_forward, zeroed_output=True,
                  jvp=lambda out, ins, tans: conv2d_db(tans[0]), vjp=_db_vjp)


# ---------------------------------------------------------------- pooling
def _pool_type(x, *, kernel, stride):
    _need_float("input", x)
    if len(x.shape) != 4:
        raise ShapeError(f"expects input [N, C, H, W], got {x}")
    n, c, h, w = x.shape
    if kernel < 1 or stride < 1:
        raise ShapeError(f"bad kernel {kernel} or stride {stride}")
    if kernel > h or kernel > w:
        raise ShapeError(f"kernel {kernel} larger than the input {h}x{w}")
    return TensorType((n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1))


def _pool_dims(x, kernel, stride):
    n, c, h, w = x.shape
    return dict(N=n, C=c, H=h, W=w, k=kernel, s=stride)


def _argmax_type(x, *, kernel, stride):
    return TensorType(_pool_type(x, kernel=kernel, stride=stride).shape, "int32")


def _argmax_forward(em, out, x, *, kernel, stride):
    scratch = em.tmp(TensorType(out.shape))
    em.prim("pool_argmax", [out, scratch], [x], **_pool_dims(x, kernel, stride))


# at[n, c, oh, ow] = flat index in the H*W plane of the window's maximum
# (the first one on ties, as PyTorch).
pool_argmax = defop("pool_argmax", _argmax_type, _argmax_forward)


def _gather_type(x, at):
    _need_float("input", x)
    if len(x.shape) != 4 or len(at.shape) != 4 or at.dtype != "int32" or at.shape[:2] != x.shape[:2]:
        raise ShapeError(f"expects input [N, C, H, W] and int32 indices [N, C, OH, OW], got {x} and {at}")
    return TensorType(at.shape)


def _plane_dims(x, at):
    return dict(planes=x.shape[0] * x.shape[1], in_plane=x.shape[2] * x.shape[3], out_plane=at.shape[2] * at.shape[3])


def _gather_forward(em, out, x, at):
    em.prim("pool_gather", [out], [x, at], **_plane_dims(x, at))


def _gather_vjp(g, out, ins, needs):
    x, at = ins
    return [pool_scatter(g, at, in_shape=x.shape) if needs[0] else None, None]


# y[n, c, o] = x[n, c, at[n, c, o]]; the gradient goes back where it came from.
pool_gather = defop("pool_gather", _gather_type, _gather_forward,
                    jvp=lambda out, ins, tans: pool_gather(tans[0], ins[1]), vjp=_gather_vjp)


def _scatter_type(g, at, *, in_shape):
    return TensorType(tuple(in_shape))


def _scatter_forward(em, out, g, at, *, in_shape):
    em.prim("pool_gather_backward", [out], [g, at], acc=True, **_plane_dims(out, at))


# zeros(in_shape) with g added where pool_gather read: its transpose.
pool_scatter = defop("pool_scatter", _scatter_type, _scatter_forward, zeroed_output=True,
                     jvp=lambda out, ins, tans, *, in_shape: pool_scatter(tans[0], ins[1], in_shape=in_shape),
                     vjp=lambda c, out, ins, needs, *, in_shape: [pool_gather(c, ins[1]), None])


def _avg_pool_forward(em, out, x, *, kernel, stride):
    em.prim("avg_pool2d", [out], [x], **_pool_dims(x, kernel, stride))


avg_pool2d = defop("avg_pool2d", _pool_type, _avg_pool_forward,
                   jvp=lambda out, ins, tans, *, kernel, stride: avg_pool2d(tans[0], kernel=kernel, stride=stride),
                   vjp=lambda g, out, ins, needs, *, kernel, stride: [
                       avg_pool2d_t(g, in_shape=ins[0].shape, kernel=kernel, stride=stride)])


def _avg_t_type(g, *, in_shape, kernel, stride):
    return TensorType(tuple(in_shape))


def _avg_t_forward(em, out, g, *, in_shape, kernel, stride):
    em.prim("avg_pool2d_backward", [out], [g], acc=True, **_pool_dims(out, kernel, stride))


# The transpose of avg_pool2d (its backward kernel), and avg_pool2d its transpose.
avg_pool2d_t = defop("avg_pool2d_t", _avg_t_type, _avg_t_forward, zeroed_output=True,
                     jvp=lambda out, ins, tans, **at: avg_pool2d_t(tans[0], **at),
                     vjp=lambda c, out, ins, needs, *, in_shape, kernel, stride: [
                         avg_pool2d(c, kernel=kernel, stride=stride)])


# ---------------------------------------------------------------- dropout
def _mask_type(state, *, shape, p):
    if state.dtype != "int32" or state.shape != (4,):
        raise ShapeError(f"a generator's state is int32[4], got {state}")
    if not 0.0 <= p <= 1.0:
        raise ShapeError(f"probability {p} not in [0, 1]")
    return TensorType(tuple(shape))


def _mask_forward(em, out, state, *, shape, p):
    # Reads the generator's state and advances it in place: a side effect on
    # a captured buffer, so the statement stays even though `state` is not used later.
    em.prim("dropout_mask", [out, state], [state], p=p)


# mask = 0 with probability p, else 1/(1-p): inverted dropout, as PyTorch's.
dropout_mask = defop("dropout_mask", _mask_type, _mask_forward)


# ---------------------------------------------------------------- embedding
def _embedding_type(table, idx):
    _need_float("table", table)
    if len(table.shape) != 2:
        raise ShapeError(f"table must be 2-D [rows, width], got {table}")
    if idx.dtype != "int32":
        raise ShapeError(f"indices must be int32, got {idx}")
    return TensorType(idx.shape + (table.shape[1],))


def _embedding_dims(table, idx):
    return dict(n=prod(idx.shape), rows=table.shape[0], width=table.shape[1])


def _embedding_forward(em, out, table, idx):
    em.prim("gather_rows", [out], [table, idx], **_embedding_dims(table, idx))


def _scatter_rows_type(g, idx, *, rows):
    return TensorType((rows, g.shape[-1]))


def _scatter_rows_forward(em, out, g, idx, *, rows):
    em.prim("scatter_add_rows", [out], [g, idx], acc=True, **_embedding_dims(out, idx))


# zeros [rows, width] with the rows of g added at idx: embedding's transpose.
scatter_rows = defop("scatter_rows", _scatter_rows_type, _scatter_rows_forward, zeroed_output=True,
                     jvp=lambda out, ins, tans, *, rows: scatter_rows(tans[0], ins[1], rows=rows),
                     vjp=lambda c, out, ins, needs, *, rows: [embedding(c, ins[1]), None])


# out[..., :] = table[idx[...], :], bounds-checked; gradient rows scatter-added.
embedding = defop("embedding", _embedding_type, _embedding_forward,
                  jvp=lambda out, ins, tans: embedding(tans[0], ins[1]),
                  vjp=lambda g, out, ins, needs: [scatter_rows(g, ins[1], rows=ins[0].shape[0]), None])


# ---------------------------------------------------------------- assign
def assign(dst, value, index=None, add=False):
    """Write `value` (broadcast to dst's shape) into the captured array `dst`
    in place: a statement, not an op, with no result buffer and no gradient.
    It is how a staged optimizer updates parameters and its state, which
    live in numpy arrays shared with C++.  Returns the staged `dst`, which
    reads the new value from here on.

    With `index` (a 1-D int32 tensor of row numbers in [0, rows), checked
    at run time, as lt.embedding's) only those rows of a 2-D `dst` are
    written, from the rows of a 2-D `value`: numpy's dst[index] = value (a
    repeated row keeps the last one); with `add=True`, np.add.at(dst, index,
    value) (repeated rows add up).  Without `index`, `add=True` is
    dst += value."""
    b = current()
    d = as_rep(dst)
    v = as_rep(value, d.dtype)
    if not any(var is d.var for _, var in b.captures):
        raise staging_error(
            "assign: the destination must be a captured array (a numpy array or "
            "parameter used by the staged code), not a value computed while staging"
        )
    if v.dtype != d.dtype and not (d.dtype == "float32" and v.var.storage == "const"):
        raise staging_error(f"assign: cannot write {v.dtype} into a {d.dtype} array; cast it first")
    if v.block is not None and not b.visible(v.block):
        raise staging_error(f"assign: {v.var.name} is used outside the scope it was computed in")
    em = Emitter(b, f"assign {user_location()}")
    if index is not None:
        _assign_rows(em, d, v, as_rep(index), add)
        return d
    try:
        shape = broadcast_shapes(d.shape, v.shape)
    except ShapeError as e:
        raise staging_error(f"assign: {e}") from None
    if shape != d.shape:
        raise staging_error(f"assign: a value of shape {v.shape} does not fit into {d.shape}")
    em.map(d.var, "{0}", v.var, acc=add)
    return d


def _assign_rows(em, d, v, idx, add: bool) -> None:
    if idx.dtype != "int32" or len(idx.shape) != 1:
        raise staging_error(f"assign: index must be a 1-D int32 tensor of row numbers, got {idx.type}")
    if len(d.shape) != 2 or v.shape != (idx.shape[0], d.shape[1]):
        raise staging_error(f"assign: rows {v.type} for index {idx.type} do not fit into the rows of "
                            f"{d.type} (expected [{idx.shape[0]}, {d.shape[1] if len(d.shape) == 2 else '?'}] "
                            "into a 2-D array)")
    # Both kernels leave the other rows as they are: `accumulate` (the
    # destination is read too) keeps every pass from taking either for a
    # write of the whole array.
    em.prim("scatter_add_rows" if add else "put_rows", [d.var], [v.var, idx.var], acc=True,
            what="assign index", **_embedding_dims(d.type, idx.type))
